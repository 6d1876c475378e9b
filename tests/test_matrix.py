"""The registry-driven matrix: every backbone x every adapter x the cell_type task.

Compatible pairs train a tiny random instance (the backbone's ``example_config``) for one epoch on
CPU, save adapter-only files, reload them with ``api.predict`` and must reproduce the run's own
predictions and embeddings. Incompatible pairs must raise ``CompatibilityError`` at validation.
A new plugin (built-in or installed) joins the matrix without editing this file; the test-only
``toy`` backbone (``sctune.testing.ToyBackbone``) supplies pairs that must be refused.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from sctune import api, testing
from sctune.core.errors import CompatibilityError

TASK = "cell_type"
# Pairs that fail for a known reason outside this test's reach (strict: a fix makes them XPASS).
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _registry():
    return testing.registry_with(testing.ToyBackbone, testing.ToyRegressionTask, autoload=True)


REGISTRY = _registry()


def _pairs() -> tuple[list, list]:
    """(backbone, adapter, task) triples that must work, and backbone/adapter pairs that must
    be refused. Methods that train nothing join only tasks that declare zero-shot transfer."""
    ok, bad = [], []
    for b in REGISTRY.names("backbone"):
        for a in REGISTRY.names("adapter"):
            try:
                REGISTRY.check_compatible(b, a)
            except CompatibilityError:
                bad.append(pytest.param(b, a, id=f"{b}-{a}"))
                continue
            for t in REGISTRY.names("task"):
                if not REGISTRY.get("adapter", a).cls.trains and not (
                    REGISTRY.get("task", t).cls.zero_shot
                ):
                    continue
                marks = (
                    [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(b, a)])]
                    if (b, a) in KNOWN_BUGS
                    else []
                )
                ok.append(pytest.param(b, a, t, id=f"{b}-{a}-{t}", marks=marks))
    return ok, bad


COMPATIBLE, INCOMPATIBLE = _pairs()


@pytest.fixture(scope="module")
def matrix_registry():
    return REGISTRY


@pytest.fixture(scope="module")
def backbone_options(tmp_path_factory: pytest.TempPathFactory, tiny_h5ad: Path):
    """``example_config`` of each backbone, written once per module (None: not implemented)."""
    cache: dict[str, dict | None] = {}

    def get(name: str) -> dict | None:
        if name not in cache:
            cls = REGISTRY.get("backbone", name).cls
            workdir = tmp_path_factory.mktemp(f"example_{name}")
            try:
                cache[name] = dict(cls.example_config(workdir, testing.adata_genes(tiny_h5ad)))
            except NotImplementedError:
                cache[name] = None
        return cache[name]

    return get


def _recipe(
    backbone: str,
    adapter: str,
    options: dict,
    data: Path,
    out: Path,
    plots: bool = False,
    task: str = TASK,
) -> dict:
    return {
        "sctune": 1,
        "name": f"{backbone}-{adapter}",
        "seed": 0,
        "data": {
            "path": str(data),
            "label_column": "cell_type",
            "split": {"method": "stratified", "valid": 0.15, "test": 0.25},
        },
        "backbone": {"name": backbone, **options},
        "adapter": {"name": adapter},
        "task": {
            "name": task,
            **REGISTRY.get("task", task).cls.example_config(),
            **({"umap": plots} if task == TASK else {}),
        },
        "trainer": {
            "epochs": 1,
            "batch_size": 16,
            "eval_batch_size": 64,
            "device": "cpu",
            "early_stopping": None,
            "optimizer": {"name": "adam", "lr": 1.0e-3},
            "num_threads": 1,
        },
        "output": {"dir": str(out), "plots": plots, "overwrite": True},
    }


def test_matrix_is_not_empty() -> None:
    assert {"scgpt", "geneformer", "scbert"} <= set(REGISTRY.names("backbone"))
    assert {"cell_type", "toy_regression"} <= set(REGISTRY.names("task"))
    assert len(COMPATIBLE) >= 3 * 7 + 3 * 6
    assert INCOMPATIBLE, "the toy backbone must be refused by some adapter"


@pytest.mark.parametrize(("backbone", "adapter", "task"), COMPATIBLE)
def test_train_save_reload(
    backbone: str, adapter: str, task: str, backbone_options, tiny_h5ad: Path, tmp_path: Path
) -> None:
    options = backbone_options(backbone)
    if options is None:
        pytest.skip(f"backbone '{backbone}' provides no example_config")
    if not REGISTRY.get("adapter", adapter).cls.trains:  # no fresh stem that would stay random
        options = {**options, **REGISTRY.get("backbone", backbone).cls.parameter_free_options}
    rec = _recipe(backbone, adapter, options, tiny_h5ad, tmp_path / "run", task=task)
    result = api.run(rec, registry=REGISTRY, progress=False, log=lambda m: None)

    run_dir = result.run_dir
    assert run_dir.is_absolute()
    for name in (
        "adapter.safetensors",
        "head.safetensors",
        "adapter.json",
        "metrics.json",
        "predictions.h5ad",
        "recipe.resolved.yaml",
        "split.json",
        "env.json",
    ):
        assert (run_dir / name).is_file(), name
    params = result.metrics["parameters"]
    if adapter == "full":
        assert params["trainable"] == params["total"] - _always_frozen(backbone, run_dir)
    elif adapter in ("head", "zero_shot"):
        assert params["adapter"] == 0
    else:
        assert 0 < params["adapter"] < params["total"]
    if REGISTRY.get("adapter", adapter).cls.trains:
        audit = (run_dir / "gradient_audit.json").read_text()
        assert '"ok": true' in audit

    out = api.predict(run_dir, tiny_h5ad, tmp_path / "annotated.h5ad", registry=REGISTRY)
    got, want = ad.read_h5ad(out), ad.read_h5ad(run_dir / "predictions.h5ad")
    assert list(got.obs_names) == list(want.obs_names)
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5, rtol=0)
    columns = [c for c in want.obs.columns if c.startswith("sctune_") and c != "sctune_split"]
    assert columns, "the task wrote no output column"
    for c in columns:  # whatever the task writes, predict writes the same
        if want.obs[c].dtype.kind in "fc":
            np.testing.assert_allclose(got.obs[c], want.obs[c], rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(
                got.obs[c].to_numpy(dtype=str), want.obs[c].to_numpy(dtype=str)
            )


def _always_frozen(backbone: str, run_dir: Path) -> int:
    """Parameters the backbone declares it never trains (module attribute ``always_frozen``),
    plus its fresh modules when the task's head never reads the cell embedding they feed."""
    from sctune.core.objective import EncoderHead
    from sctune.core.predictor import rebuild

    model = rebuild(run_dir, REGISTRY)[2].model
    module = model.backbone
    n = sum(module.get_parameter(n).numel() for n in getattr(module, "always_frozen", ()))
    if isinstance(model.head, EncoderHead) and not model.head.reads_cell_embedding:
        for name in getattr(module, "fresh_modules", ()):
            n += sum(p.numel() for p in module.get_submodule(name).parameters())
    return n


@pytest.mark.parametrize(("backbone", "adapter"), INCOMPATIBLE)
def test_incompatible_pair_is_refused(
    backbone: str, adapter: str, backbone_options, tiny_h5ad: Path, tmp_path: Path
) -> None:
    options = backbone_options(backbone) or {}
    rec = _recipe(backbone, adapter, options, tiny_h5ad, tmp_path / "run")
    with pytest.raises(CompatibilityError) as info:
        REGISTRY.check_compatible(backbone, adapter)
    message = info.value.message
    assert f"'{adapter}'" in message and f"'{backbone}'" in message
    assert "adapters compatible with" in message
    with pytest.raises(CompatibilityError, match=f"adapter '{adapter}' cannot be applied"):
        api.validate(rec, registry=REGISTRY, check_data=False)
    assert not (tmp_path / "run").exists()


def test_one_run_writes_the_plots(backbone_options, tiny_h5ad: Path, tmp_path: Path) -> None:
    rec = _recipe(
        "scgpt",
        "gene_encoder_prompt",
        backbone_options("scgpt"),
        tiny_h5ad,
        tmp_path / "run",
        plots=True,
    )
    rec["trainer"]["epochs"] = 2
    result = api.run(rec, registry=REGISTRY, progress=False, log=lambda m: None)
    for png in ("confusion_matrix.png", "umap.png"):
        data = (result.run_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, png
    test = result.metrics["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and "macro_f1" in test
    assert result.metrics["train"]["epochs_run"] == 2
    log = (result.run_dir / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 2


@pytest.mark.parametrize(
    "backbone",
    [
        b
        for b in REGISTRY.names("backbone")
        if REGISTRY.get("backbone", b).cls.parameter_free_options
    ],
)
def test_zero_shot_refuses_an_untrained_pooling_stem(
    backbone: str, backbone_options, tiny_h5ad: Path, tmp_path: Path
) -> None:
    """zero_shot trains nothing, so it must not embed through a freshly initialised stem."""
    cls = REGISTRY.get("backbone", backbone).cls
    options = backbone_options(backbone)
    if options is None:
        pytest.skip(f"backbone '{backbone}' provides no example_config")
    key = next(iter(cls.parameter_free_options))
    choices = cls.config_cls.model_fields[key].annotation.__args__
    fresh = [c for c in choices if c != cls.parameter_free_options[key]]
    refused = 0
    for value in fresh:  # the choices whose module has a fresh stem must be refused
        opts = {**options, key: value}
        with torch.device("meta"):
            module = cls().build(cls.config_cls.model_validate(opts), load_weights=False)
        rec = _recipe(backbone, "zero_shot", opts, tiny_h5ad, tmp_path / "run")
        if not getattr(module, "fresh_modules", ()):
            api.validate(rec, registry=REGISTRY)
            continue
        refused += 1
        with pytest.raises(CompatibilityError, match="newly initialised") as info:
            api.validate(rec, registry=REGISTRY)
        assert f"backbone.{key}={cls.parameter_free_options[key]}" in (info.value.hint or "")
        assert not (tmp_path / "run").exists()
    assert refused >= 1


def test_a_method_that_trains_nothing_needs_a_task_with_transfer(
    backbone_options, tiny_h5ad: Path, tmp_path: Path
) -> None:
    from sctune.core.errors import RecipeError

    rec = _recipe(
        "scgpt",
        "zero_shot",
        backbone_options("scgpt"),
        tiny_h5ad,
        tmp_path / "r",
        task="toy_regression",
    )
    with pytest.raises(RecipeError, match="needs a task with zero-shot transfer"):
        api.validate(rec, registry=REGISTRY, check_data=False)
