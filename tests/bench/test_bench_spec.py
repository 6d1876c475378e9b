"""Grid files are validated like recipes: every problem at once, located, with did-you-mean,
exit code 2 and no traceback; the shipped grid expands from any working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sctune import api
from sctune.core.errors import RecipeError


def _edit(path: Path, **changes: object) -> Path:
    grid = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        node = grid
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_bad_grid_is_reported_with_locations(tmp_path: Path, make_grid, cli, registry):
    grid = make_grid(tmp_path)
    _edit(grid, seed=3, **{"tasks.cell_type.datasets": ["tiny", "tinny"]})
    _edit(grid, **{"stats.compare_to": ["ful"], "methods.lora.adapter": {"name": "lroa"}})
    res = cli("bench", str(grid), "--dry-run", registry=registry)
    assert res.code == 2 and "Traceback" not in res.text
    assert f"error: grid '{grid}' is invalid (3 problems)" in res.err
    assert "seed: unknown key; did you mean 'seeds'?" in res.err
    assert "tasks.cell_type.datasets.1: unknown dataset 'tinny'; did you mean 'tiny'?" in res.err
    assert "stats.compare_to.0: unknown method or baseline 'ful'; did you mean 'full'?" in res.err
    # once those are fixed, the plugin names are checked
    _edit(grid, seed=None, **{"tasks.cell_type.datasets": ["tiny"], "stats.compare_to": ["full"]})
    res = cli("bench", str(grid), "--dry-run", registry=registry)
    assert res.code == 2 and "Traceback" not in res.text
    assert "methods.lora.adapter.name: unknown adapter 'lroa'; did you mean 'lora'?" in res.err


def test_bad_cell_recipe_is_located_in_its_cell(tmp_path: Path, make_grid, registry):
    grid = make_grid(tmp_path, methods={"lora": {"adapter": {"name": "lora", "rank": 0}}})
    with pytest.raises(RecipeError) as info:
        api.bench(grid, registry=registry, dry_run=True)
    text = info.value.message
    assert "cell (task=cell_type, dataset=tiny, backbone=scgpt, method=lora):" in text
    assert "adapter.rank" in text


def test_dry_run_lists_cells_and_skips_absent_optional_data(
    tmp_path: Path, make_grid, cli, registry
):
    res = cli("bench", str(make_grid(tmp_path)), "--dry-run", registry=registry)
    assert res.code == 0, res
    assert "grid 'tiny' is valid: 9 cells" in res.out
    assert "dataset 'elsewhere' skipped" in res.out
    assert "cell_type__tiny__scgpt__zero_shot__s2" in res.out


def test_unknown_grid_name(cli, registry):
    res = cli("bench", "paper_smal", "--dry-run", registry=registry)
    assert res.code == 2
    assert (
        "grid 'paper_smal' is neither a file nor a shipped grid; did you mean 'paper_small'?"
        in res.err
    )


def test_shipped_grid_expands_outside_the_repository(tmp_path: Path, monkeypatch, registry):
    """paper_small needs nothing beside the installed package; its optional shared dataset is
    skipped with a message naming the variable to set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCTUNE_BENCH_DATA", raising=False)
    plan = api.bench("paper_small", registry=registry, dry_run=True)
    assert {c.backbone for c in plan.cells} == {"scgpt", "geneformer", "scbert"}
    assert {c.method for c in plan.cells} >= {"lora", "full", "head", "zero_shot"}
    assert {c.seed for c in plan.cells} == {0, 1, 2}
    assert "SCTUNE_BENCH_DATA" in plan.absent["pancreas"]
    geneformer = next(c for c in plan.cells if c.backbone == "geneformer")
    assert geneformer.recipe["data"]["path"] == "scanpy:pbmc68k_reduced_counts"


def test_bench_help_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from sctune.cli.main import main; sys.argv = ['sctune', 'bench', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', [m for m in ('torch', 'sklearn', 'scanpy') if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert "--jobs" in proc.stdout and "paper_small" in proc.stdout
    assert "HEAVY []" in proc.stdout
