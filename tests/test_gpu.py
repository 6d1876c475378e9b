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


def _tiny_scgpt(tmp_path: Path, *, dropout: float = 0.1, attention_dropout: float = 0.1):
    """A small random scGPT encoder (64 d, 2 layers) with a 200-gene vocabulary, on CUDA."""
    import json

    backbone = REGISTRY.instance("backbone", "scgpt")
    vocab = {f"G{i}": i for i in range(200)} | {"<pad>": 200, "<cls>": 201, "<eoc>": 202}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    cfg = backbone.config_cls.model_validate(
        {"vocab": str(tmp_path / "vocab.json"), "embsize": 64, "nheads": 4, "d_hid": 64,
         "nlayers": 2, "dropout": dropout, "attention_dropout": attention_dropout}
    )  # fmt: skip
    module = backbone.build(cfg).cuda()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200, (8, 300), generator=g)
    ids[:, 0] = 201
    mask = torch.zeros(8, 300, dtype=torch.bool)
    mask[1, 250:] = True  # real padding: the kernel must take a mask
    ids[mask] = 200
    batch = {
        "gene_ids": ids.cuda(),
        "values": torch.randint(1, 51, (8, 300), generator=g).float().cuda(),
        "padding_mask": mask.cuda(),
    }
    return module, batch


def test_bf16_training_step_runs_the_fused_attention_kernel(tmp_path: Path) -> None:
    """Under bf16 autocast a training step (attention dropout on) runs SDPA's fused kernel: with
    the math fallback forbidden it still runs, and the profiler sees the fused CUDA kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    module, batch = _tiny_scgpt(tmp_path)
    module.train()
    for p in module.parameters():
        p.requires_grad_(True)
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    fused += [b for b in (getattr(SDPBackend, "CUDNN_ATTENTION", None),) if b is not None]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        with sdpa_kernel(fused), torch.autocast("cuda", dtype=torch.bfloat16):
            out = module(batch)
            assert out.tokens.dtype == torch.bfloat16
            out.cell.float().pow(2).mean().backward()
        torch.cuda.synchronize()
    names = [e.key.lower() for e in prof.key_averages()]
    kernels = [n for n in names if any(k in n for k in ("flash", "fmha", "efficient", "cudnn"))]
    assert kernels, f"no fused attention kernel among the CUDA kernels: {names[:30]}"
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def test_activation_checkpointing_gives_the_same_gradients_with_less_memory(
    tmp_path: Path,
) -> None:
    from sctune.core.trainer import enable_activation_checkpointing

    module, batch = _tiny_scgpt(tmp_path)
    module.train()
    grads, peaks = [], []
    for ckpt in (False, True):
        if ckpt:
            assert enable_activation_checkpointing(module) == 2
        module.zero_grad(set_to_none=True)
        for p in module.parameters():
            p.requires_grad_(True)
        torch.manual_seed(0)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        module(batch).cell.float().pow(2).mean().backward()
        peaks.append(torch.cuda.max_memory_allocated() - base)
        grads.append([p.grad.clone() for p in module.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert peaks[1] < peaks[0]


def test_compile_and_checkpointing_train_on_gpu(tiny_h5ad: Path, tmp_path: Path) -> None:
    rec = testing.example_recipe(REGISTRY, "scgpt", "lora", tmp_path, tiny_h5ad, epochs=2)
    rec["trainer"].update(
        {"precision": "bf16-mixed", "device": "cuda", "compile": True,
         "activation_checkpointing": True}
    )  # fmt: skip
    result = api.run(rec, registry=REGISTRY, progress=False, log=lambda m: None)
    assert np.isfinite(result.metrics["test"]["accuracy"])
    out = api.predict(result.run_dir, tiny_h5ad, tmp_path / "annotated.h5ad", registry=REGISTRY)
    got, want = ad.read_h5ad(out), ad.read_h5ad(result.run_dir / "predictions.h5ad")
    agree = (
        got.obs["sctune_prediction"].to_numpy(str) == want.obs["sctune_prediction"].to_numpy(str)
    ).mean()
    assert agree > 0.9
