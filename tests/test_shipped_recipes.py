"""Shipped recipes run where users are: from any working directory, on a plain install.

Every ``small_*`` and ``pretrain_*`` recipe and ``quickstart`` must need nothing outside the
package (no ``../shared``, no relative paths) and scanpy's bundled data only. The wheel must carry the
recipes and the Geneformer V1 dictionaries they name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from sctune import api, testing
from sctune.core.paths import resolve_paths
from sctune.core.recipe import read_yaml

REPO = Path(__file__).resolve().parents[1]
SMALL = sorted(
    name
    for name in api.recipes(api.get_registry(autoload=False))
    if name == "quickstart" or name.split("/")[-1].startswith(("small_", "pretrain_"))
)


@pytest.fixture
def away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no ``../shared`` next to it."""
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    assert not (cwd.parent / "shared").exists() and not (cwd / "shared").exists()
    monkeypatch.chdir(cwd)
    return cwd


def test_the_small_recipes_are_found() -> None:
    assert {
        "quickstart",
        "scgpt/small_lora_cell_type",
        "geneformer/small_lora_cell_type",
        "scbert/small_gene_token_prompt_cell_type",
    } <= set(SMALL)


@pytest.mark.parametrize("name", sorted(api.recipes(api.get_registry(autoload=False))))
def test_shipped_recipes_hold_no_relative_paths(name: str, registry) -> None:
    """A relative path would resolve inside the installed package: refuse it."""
    path = api.recipes(registry)[name]
    raw = read_yaml(path)
    assert "shared" not in path.read_text()
    assert resolve_paths(raw, registry, "/one") == resolve_paths(raw, registry, "/two"), name


@pytest.mark.parametrize("name", SMALL)
def test_small_recipes_validate_from_anywhere(name: str, away: Path, registry) -> None:
    light = testing.light_task_overrides(registry, name)
    report = api.validate(name, ["data.max_cells=200", *light], registry=registry)
    assert not any("shared" in line for line in report["info"] + report["warnings"])


def test_geneformer_small_recipe_runs_from_anywhere(away: Path, registry) -> None:
    result = api.run(
        "geneformer/small_lora_cell_type",
        [
            "data.max_cells=200",
            "task.min_class_cells=1",
            "trainer.epochs=1",
            "trainer.num_threads=1",
            "trainer.device=cpu",
            "output.plots=false",
        ],
        registry=registry,
        progress=False,
        log=lambda m: None,
    )
    assert result.run_dir == away / "runs" / "geneformer-small-lora-pbmc68k"
    resolved = yaml.safe_load((result.run_dir / "recipe.resolved.yaml").read_text())
    assert resolved["data"]["path"] == "scanpy:pbmc68k_reduced_counts"
    assert resolved["backbone"]["token_dictionary"] == "builtin:v1"
    assert resolved["output"]["dir"] is None  # the default: runs/<name> in the working directory


def _build_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--retries", "0"]
    cmd += ["--timeout", "10", "-q", "-w", str(dest), str(REPO)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        if "hatchling" in out and ("No matching distribution" in out or "connection" in out):
            pytest.skip("hatchling (the build backend) is not available offline")
        raise AssertionError(out[-3000:])
    (wheel,) = dest.glob("sctune-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_carries_recipes_dictionaries_and_the_shipped_checkpoints(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "sctune/backbones/geneformer/data/"
    for f in (
        "v1_token_dictionary.json.gz",
        "v1_gene_median_dictionary.json.gz",
        "v1_gene_name_id_dict.json.gz",
        "LICENSE",
        "NOTICE",
    ):
        assert data + f in names
    for path in (REPO / "src" / "sctune" / "recipes").rglob("*.yaml"):
        assert path.relative_to(REPO / "src").as_posix() in names
    assert "sctune/plugins.yaml" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA")))
    assert b"License-Expression: MIT AND Apache-2.0" in metadata
    for backbone in ("scgpt", "scbert", "geneformer"):  # each one's builtin:pbmc_small
        folder = REPO / "src" / "sctune" / "backbones" / backbone / "checkpoints" / "pbmc_small"
        files = [f for f in folder.iterdir() if f.is_file()]
        assert {"backbone.yaml", "pretraining_cells.json", "NOTICE"} <= {f.name for f in files}
        for f in files:
            assert f.relative_to(REPO / "src").as_posix() in names
    # the V1 dictionaries are gzipped (about 0.8 MB); the three float32 checkpoints' weights do not
    # compress: scGPT 2.7 MB, scBERT 1.0 MB, Geneformer 3.5 MB (wheel 8.0 MB)
    assert wheel.stat().st_size < 8_500_000


@pytest.mark.slow
def test_plain_install_runs_the_small_recipes(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel alone into a fresh venv that borrows this venv's dependencies (not its
    editable sctune), then validate every small recipe from an empty folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "borrowed_deps.pth").write_text("\n".join(deps) + "\n")
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True)
    work = tmp_path / "empty"
    work.mkdir()
    env = {**os.environ, "SCTUNE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    where = subprocess.run(
        [str(python), "-c", "import sctune; print(sctune.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), where
    for name in SMALL:
        proc = subprocess.run(
            [str(venv / "bin" / "sctune"), "validate", name, "data.max_cells=200"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
