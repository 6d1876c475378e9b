"""The ``sctune`` command: cheap startup, user mistakes as exit 2 without tracebacks, commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sctune import api, testing

PROBE = """
import sys
sys.argv = ["sctune", *{args!r}]
from sctune.cli.main import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "scanpy", "anndata", "transformers") if m in sys.modules)
print("SCTUNE_PROBE", code, ",".join(heavy) or "-", file=sys.stderr)
"""


def _probe(*args: str) -> tuple[int, list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=list(args))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next(x for x in proc.stderr.splitlines() if x.startswith("SCTUNE_PROBE"))
    _, code, heavy = line.split()
    return int(code or 0), [] if heavy == "-" else heavy.split(","), proc.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["plugins"], ["plugins", "--json"], ["run", "--help"]]
)
def test_cheap_commands_do_not_import_torch(args: list[str]) -> None:
    code, heavy, out = _probe(*args)
    assert code == 0
    assert heavy == [], f"'sctune {' '.join(args)}' imported {heavy}"
    assert out.strip()


def test_python_m_sctune_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sctune", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for command in ("run", "validate", "inspect", "predict", "plugins", "recipes"):
        assert command in proc.stdout


def test_valid_recipe_validates(cli, write_recipe) -> None:
    result = cli("validate", write_recipe())
    assert result.code == 0, result
    assert "is valid" in result.out
    assert "120 cells x 200 genes" in result.out and "counts" in result.out


def test_misspelled_adapter(cli, write_recipe) -> None:
    result = cli("validate", write_recipe(adapter={"name": "lroa"}))
    assert result.code == 2, result
    assert "adapter.name: unknown adapter 'lroa'; did you mean 'lora'?" in result.err
    assert "installed adapters:" in result.err
    assert "Traceback" not in result.text
    assert result.err.startswith("error: recipe")


def test_all_problems_reported_at_once(cli, write_recipe) -> None:
    path = write_recipe(
        adapter={"name": "lora", "rank": 0}, trainer={"learning_rate": 0.1, "epochs": -1}
    )
    result = cli("validate", path)
    assert result.code == 2, result
    assert "(3 problems)" in result.err
    assert "adapter.rank:" in result.err
    assert "trainer.learning_rate: unknown key; did you mean 'optimizer.lr'?" in result.err
    assert "trainer.epochs: input should be greater than or equal to 0 (got -1)" in result.err
    assert "Traceback" not in result.text


def test_missing_label_column(cli, write_recipe) -> None:
    result = cli("validate", write_recipe(data={"label_column": "celltype"}))
    assert result.code == 2, result
    assert "data.label_column: column 'celltype' not found in adata.obs" in result.err
    assert "did you mean 'cell_type'?" in result.err
    assert "available columns:" in result.err and "louvain" in result.err
    assert "Traceback" not in result.text


def test_missing_data_file(cli, write_recipe, tmp_path: Path) -> None:
    result = cli("validate", write_recipe(data={"path": str(tmp_path / "nope.h5ad")}))
    assert result.code == 2, result
    assert "data.path: file" in result.err and "nope.h5ad' does not exist" in result.err
    assert "Traceback" not in result.text


def test_missing_recipe_suggests_shipped(cli) -> None:
    result = cli("validate", "quikstart")
    assert result.code == 2
    assert "did you mean 'quickstart'?" in result.err


def test_overrides(cli, write_recipe, tiny_h5ad: Path) -> None:
    path = write_recipe()
    rec = api.load(path, ["adapter.rank=4", "trainer.optimizer.lr=1e-4", "adapter.targets=[q, k]"])
    assert rec.adapters[0].config.rank == 4
    assert rec.trainer.optimizer.lr == pytest.approx(1e-4)  # PyYAML's '1e-4' string, lax-parsed
    assert list(rec.adapters[0].config.targets) == ["q", "k"]
    ok = cli("validate", path, "adapter.rank=4", "--no-data")
    assert ok.code == 0, ok
    bad = cli("validate", path, "adapter.rank=0", "adapter.nmae=x", "--no-data")
    assert bad.code == 2 and "adapter.rank" in bad.err and "adapter.nmae: unknown key" in bad.err
    broken = cli("validate", path, "adapter.rank")
    assert broken.code == 2 and "expected dotted.key=value" in broken.err


def test_recipes_list_and_init(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listing = cli("recipes")
    assert listing.code == 0 and "quickstart" in listing.out
    monkeypatch.chdir(tmp_path)
    result = cli("recipes", "init", "quickstart")
    assert result.code == 0, result
    copied = tmp_path / "quickstart.yaml"
    assert copied.read_text() == api.recipes()["quickstart"].read_text()
    assert yaml.safe_load(copied.read_text())["sctune"] == 1
    again = cli("recipes", "init", "quickstart")
    assert again.code == 2 and "already exists" in again.err


def test_inspect_json(cli, write_recipe) -> None:
    result = cli("inspect", write_recipe(), "--json")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert {
        "backbone",
        "adapters",
        "task_state",
        "total",
        "trainable",
        "backbone_total",
        "head",
        "modules",
        "randomly_initialised",
        "gradient_audit",
    } <= set(report)
    assert report["backbone"] == "scgpt" and report["adapters"][0]["name"] == "lora"
    assert len(report["task_state"]["classes"]) == 10 and report["randomly_initialised"] is True
    assert report["trainable"] == report["adapters"][0]["trainable"] + report["head"]
    assert sum(m["total"] for m in report["modules"]) == report["total"]
    assert report["gradient_audit"]["ok"] is True
    table = cli("inspect", write_recipe(), "--no-audit")
    assert table.code == 0 and "trainable" in table.out and "randomly initialised" in table.out


def test_run_then_predict_refuses_changed_checkpoint(cli, tmp_path: Path, tiny_h5ad: Path) -> None:
    registry = testing.registry_with()
    rec = testing.example_recipe(
        registry, "scgpt", "lora", tmp_path, tiny_h5ad, out=tmp_path / "run"
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(rec))
    result = cli("run", path, "--quiet")
    assert result.code == 0, result
    assert "RANDOMLY INITIALISED" not in result.out  # a real-format checkpoint was given
    out = cli("predict", tmp_path / "run", tiny_h5ad, "-o", tmp_path / "a.h5ad")
    assert out.code == 0, out
    assert (tmp_path / "a.h5ad").is_file()
    again = cli("predict", tmp_path / "run", tiny_h5ad, "-o", tmp_path / "a.h5ad")
    assert again.code == 2 and "already exists" in again.err

    weights = Path(rec["backbone"]["checkpoint"]) / "best_model.pt"
    state = torch.load(weights, weights_only=True)
    key = next(k for k in state if k.endswith("Wqkv.weight"))
    state[key] = state[key] + 0.01
    torch.save(state, weights)
    refused = cli("predict", tmp_path / "run", tiny_h5ad, "-o", tmp_path / "b.h5ad")
    assert refused.code == 2, refused
    assert "different backbone 'scgpt'" in refused.err and "sha256" in refused.err
    assert "best_model.pt" in refused.err and "Traceback" not in refused.text
    assert not (tmp_path / "b.h5ad").exists()


def test_run_directory_exists(cli, write_recipe, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    result = cli("run", write_recipe(), "-q")
    assert result.code == 2 and "already exists and is not empty" in result.err
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


def test_validate_reports_gene_match_from_the_symbol_column(cli, shared_data) -> None:
    """Zheng has Ensembl var_names and symbols in var['gene_symbol']: scGPT matches via symbols."""
    vocab = shared_data / "vocab" / "scgpt_census_vocab.json"
    result = cli(
        "validate",
        "quickstart",
        f"data.path={shared_data / 'zheng_sorted_pbmc_facs.h5ad'}",
        "backbone.checkpoint=null",
        f"backbone.vocab={vocab}",
    )
    assert result.code == 0, result
    assert "(88.0%)" in result.out and "symbol column" in result.out
