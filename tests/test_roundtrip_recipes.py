"""predict == run, for every shipped recipe and every method it can take.

Each shipped recipe is run as shipped (its backbone, head options such as ``input_norm: batch``,
its randomly initialised backbone) at a tiny size (1 epoch, few cells, no plots): with its own
method, and every compatible registered adapter is swapped in by name on at least one recipe of
every backbone (rotating over that backbone's recipes, so each task meets several adapters; the
full backbone x adapter x task product is checked on tiny models by tests/test_matrix.py). ``api.predict`` on the run's own cells must
reproduce ``predictions.h5ad``: every column the task writes (labels 100 %) and ``X_sctune``
within 1e-5, also after the run directory has been moved (once per recipe, with its own
method). New recipes and new adapters join without edits.
Recipes that need files a user must supply (real checkpoints) are checked to fail for that
reason only, so none is skipped silently.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from sctune import api, testing
from sctune.core.errors import CompatibilityError, SctuneError

REGISTRY = api.get_registry()
RECIPES = api.recipes(REGISTRY)
TINY = [
    "data.max_cells=90",
    "trainer.epochs=1",
    "trainer.num_threads=1",
    "trainer.device=cpu",
    "output.plots=false",
    "output.overwrite=true",
]


def _runnable(name: str) -> str | None:
    """None when the shipped recipe validates offline, else why it cannot (a missing user file)."""
    try:
        api.validate(name, registry=REGISTRY, check_data=False)
    except SctuneError as exc:
        return exc.message
    return None


def _fits(name: str, adapter: str) -> bool:
    rec = api.load(name, registry=REGISTRY)
    try:
        REGISTRY.check_compatible(rec.backbone.name, adapter)
    except CompatibilityError:
        return False
    task = REGISTRY.get("task", rec.task.name).cls
    # a method that trains nothing is refused at validate unless the task has a zero-shot
    # transfer (tests/test_matrix.py checks the refusal)
    return bool(REGISTRY.get("adapter", adapter).cls.trains or task.zero_shot)


def _cases() -> list:
    """Every runnable recipe with its own method; every adapter on every backbone it fits, on one
    of that backbone's recipes (the next one in turn, among those the adapter fits)."""
    runnable = [n for n in RECIPES if _runnable(n) is None]
    pairs = {(n, api.load(n, registry=REGISTRY).adapters[0].name) for n in runnable}
    by_backbone: dict[str, list[str]] = {}
    for n in runnable:
        by_backbone.setdefault(api.load(n, registry=REGISTRY).backbone.name, []).append(n)
    for names in by_backbone.values():
        for i, adapter in enumerate(REGISTRY.names("adapter")):
            fitting = [n for n in names if _fits(n, adapter)]
            if fitting:
                pairs.add((fitting[i % len(fitting)], adapter))
    return [pytest.param(n, a, id=f"{n}-{a}") for n, a in sorted(pairs)]


CASES = _cases()


def test_every_shipped_small_recipe_and_every_adapter_is_in_the_round_trip() -> None:
    runnable = {c.values[0] for c in CASES}
    assert {"quickstart", "scgpt/small_lora_cell_type"} <= runnable
    for name in RECIPES:
        if name not in runnable:  # only recipes that need a user's checkpoint may be left out
            assert "checkpoint" in (_runnable(name) or ""), name
    covered = {
        (api.load(n, registry=REGISTRY).backbone.name, a) for n, a in (c.values for c in CASES)
    }
    for backbone in {b for b, _ in covered}:
        for adapter in REGISTRY.names("adapter"):
            fits = any(
                _fits(n, adapter)
                for n in runnable
                if api.load(n, registry=REGISTRY).backbone.name == backbone
            )
            assert (backbone, adapter) in covered or not fits, (backbone, adapter)


def _same_outputs(got_path: Path, want_path: Path) -> None:
    """Every column the task writes agrees (labels 100 %, numbers to 1e-5), and X_sctune."""
    got, want = ad.read_h5ad(got_path), ad.read_h5ad(want_path)
    assert list(got.obs_names) == list(want.obs_names)
    columns = [c for c in want.obs.columns if c.startswith("sctune_") and c != "sctune_split"]
    assert columns, "the task wrote no output column"
    for c in columns:
        if want.obs[c].dtype.kind in "fc":
            np.testing.assert_allclose(got.obs[c], want.obs[c], rtol=1e-5, atol=1e-5)
        else:
            same = got.obs[c].to_numpy(dtype=str) == want.obs[c].to_numpy(dtype=str)
            assert same.all(), f"predict agrees with the run on {same.mean():.1%} of '{c}'"
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("recipe", "adapter"), CASES)
def test_predict_reproduces_the_run(recipe: str, adapter: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = [
        *TINY,
        *testing.light_task_overrides(REGISTRY, recipe),
        f"adapter={{name: {adapter}}}",
    ]
    overrides.append(f"output.dir={out}")
    if not REGISTRY.get("adapter", adapter).cls.trains:  # no fresh, never-trained stem
        backbone = REGISTRY.get("backbone", api.load(recipe, registry=REGISTRY).backbone.name)
        overrides += [f"backbone.{k}={v}" for k, v in backbone.cls.parameter_free_options.items()]
    result = api.run(recipe, overrides, registry=REGISTRY, progress=False, log=lambda m: None)
    own_cells = result.run_dir / "predictions.h5ad"
    _same_outputs(api.predict(result.run_dir, own_cells, tmp_path / "a.h5ad"), own_cells)

    if adapter != api.load(recipe, registry=REGISTRY).adapters[0].name:
        return  # moving the run directory is checked once per recipe, with its own method
    moved = tmp_path / "elsewhere" / "moved-run"
    moved.parent.mkdir()
    shutil.move(str(result.run_dir), moved)
    _same_outputs(
        api.predict(moved, moved / "predictions.h5ad", tmp_path / "b.h5ad"),
        moved / "predictions.h5ad",
    )
