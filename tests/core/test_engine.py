"""Assembly (exact trainable set, always-frozen tensors), the gradient audit, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sctune import api, testing
from sctune.core import artifacts as A
from sctune.core.assembly import assemble
from sctune.core.audit import AuditError, audit_gradients
from sctune.core.errors import CheckpointError


class _Prepared:
    classes = ["a", "b", "c"]


def _toy(registry, tmp_path: Path, adapter: str, **options):
    backbone = registry.instance("backbone", "toy")
    bcfg = backbone.config_cls.model_validate(
        backbone.example_config(tmp_path, [f"G{i}" for i in range(20)])
    )
    plugin = registry.instance("adapter", adapter)
    task = registry.instance("task", "cell_type")
    return assemble(
        backbone,
        bcfg,
        [(plugin, plugin.config_cls.model_validate(options))],
        task,
        task.config_cls(),
        _Prepared(),
    )


@pytest.fixture(scope="module")
def toy_registry():
    return testing.registry_with(testing.ToyBackbone)


def test_trainable_set_is_exact(toy_registry, tmp_path: Path) -> None:
    asm = _toy(toy_registry, tmp_path, "gene_token_prompt")
    trainable = {n for n, p in asm.model.named_parameters() if p.requires_grad}
    assert trainable == set(asm.trainable)
    assert all(n.startswith("backbone.input_slot.") for n in asm.adapter_names)
    assert all(n.startswith("head.") for n in asm.head_names)
    head = _toy(toy_registry, tmp_path, "head")
    assert head.adapter_names == [] and head.head_names


def test_always_frozen_survives_full(toy_registry, tmp_path: Path, monkeypatch) -> None:
    backbone_cls = toy_registry.get("backbone", "toy").cls
    original = backbone_cls.build

    def build(self, config, *, load_weights=True):
        module = original(self, config, load_weights=load_weights)
        module.always_frozen = ("gene.weight",)
        return module

    monkeypatch.setattr(backbone_cls, "build", build)
    asm = _toy(toy_registry, tmp_path, "full")
    assert "backbone.gene.weight" not in asm.trainable
    assert not asm.model.backbone.gene.weight.requires_grad
    assert all(p is not asm.model.backbone.gene.weight for h in asm.handles for p in h.parameters)
    assert "backbone.mix.weight" in asm.trainable


def test_audit_flags_dead_and_leaked_tensors() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    dead = nn.Parameter(torch.zeros(2))  # trainable but never used in forward
    model.register_parameter("dead", dead)
    model(torch.randn(4, 3)).sum().backward()
    audit = audit_gradients(model)
    assert audit.dead == ["dead"] and not audit.ok
    with pytest.raises(AuditError, match="1 trainable tensor\\(s\\) got no gradient: dead"):
        audit.raise_if_bad()
    model.zero_grad(set_to_none=True)
    model[0].weight.requires_grad_(False)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    leaked = audit_gradients(model)
    assert leaked.leaked == ["0.weight"]


def test_tensor_round_trip(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    saved = {"0.weight": torch.randn(3, 4), "0.bias": torch.randn(3)}
    size = A.save_tensors(tmp_path / "w.safetensors", saved)
    assert size == (tmp_path / "w.safetensors").stat().st_size > 0
    A.load_into(model, A.load_tensors(tmp_path / "w.safetensors"), what="test")
    assert torch.equal(model[0].weight, saved["0.weight"])
    with pytest.raises(CheckpointError, match="unknown tensor '1.weight'"):
        A.load_into(model, {"1.weight": torch.zeros(1)}, what="test")
    with pytest.raises(
        CheckpointError, match="0.bias: \\(5,\\) in the file, \\(3,\\) in the model"
    ):
        A.load_into(model, {"0.bias": torch.zeros(5)}, what="test")
    with pytest.raises(CheckpointError, match="missing"):
        A.load_tensors(tmp_path / "nope.safetensors")


def test_run_directory_holds_only_adapter_tensors(
    toy_registry,
    tmp_path: Path,
    tiny_h5ad: Path,
) -> None:
    rec = testing.example_recipe(
        toy_registry, "toy", "gene_token_prompt", tmp_path, tiny_h5ad, epochs=2
    )
    result = api.run(rec, registry=toy_registry, progress=False, log=lambda m: None)
    run = result.run_dir
    adapter = A.load_tensors(run / A.ADAPTER_WEIGHTS)
    head = A.load_tensors(run / A.HEAD_WEIGHTS)
    manifest = A.read_json(run / A.MANIFEST)
    assert sorted(adapter) == sorted(manifest["tensors"]["adapter"])
    assert all(k.startswith("backbone.input_slot.") for k in adapter)
    assert all(k.startswith("head.") for k in head)
    assert manifest["backbone"]["fingerprint"]["genes_file"]
    assert manifest["genes_sha256"] == A.sha256_lines((run / A.GENES).read_text().split())
    assert Path(manifest["run_dir"]).is_absolute()
    sizes = result.metrics["artifact_bytes"]
    assert sizes["adapter"] < sizes["backbone_in_memory"]
    split = A.read_json(run / A.SPLIT)
    assert sum(len(split[s]) for s in ("train", "valid", "test")) == 120
    # a second run reusing the split file sees exactly the same cells
    rec2 = testing.example_recipe(
        toy_registry, "toy", "head", tmp_path, tiny_h5ad, out=tmp_path / "run2"
    )
    rec2["data"]["split"] = {"file": str(run / A.SPLIT)}
    rec2["data"]["max_cells"] = None
    second = api.run(rec2, registry=toy_registry, progress=False, log=lambda m: None)
    split2 = A.read_json(second.run_dir / A.SPLIT)
    assert all(split[s] == split2[s] for s in ("train", "valid", "test"))
    assert np.isclose(sum(result.metrics["n_cells"].values()), 120)


def test_moved_run_directory_still_predicts(
    toy_registry,
    tmp_path: Path,
    tiny_h5ad: Path,
    monkeypatch,
) -> None:
    """Random-init files written by resolve() live in the run dir; predict rebases them."""
    import shutil

    import anndata as ad

    monkeypatch.chdir(tmp_path)
    rec = testing.example_recipe(
        toy_registry, "toy", "gene_token_prompt", tmp_path, tiny_h5ad, out=Path("relative_run")
    )
    rec["backbone"].pop("genes_file")  # resolve() writes the vocabulary into the run directory
    result = api.run(rec, registry=toy_registry, progress=False, log=lambda m: None)
    assert result.run_dir.is_absolute()
    manifest = A.read_json(result.run_dir / A.MANIFEST)
    assert Path(manifest["backbone"]["config"]["genes_file"]).is_absolute()
    moved = tmp_path / "moved"
    shutil.move(str(result.run_dir), moved)
    out = api.predict(moved, tiny_h5ad, tmp_path / "p.h5ad", registry=toy_registry)
    got, want = ad.read_h5ad(out), ad.read_h5ad(moved / A.PREDICTIONS)
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5)


def test_tensorboard_log_and_hooks(toy_registry, tmp_path: Path, tiny_h5ad: Path) -> None:
    """trainer.tensorboard writes event files; before_run / after_epoch / after_run hooks fire."""
    pytest.importorskip("tensorboard")
    from sctune import hookimpl

    seen: list[str] = []

    class Tracker:
        @hookimpl
        def sctune_before_run(self, run) -> None:
            seen.append("before")

        @hookimpl
        def sctune_after_epoch(self, run, epoch, metrics) -> None:
            assert "valid/loss" in metrics
            seen.append(f"epoch{epoch}")

        @hookimpl
        def sctune_after_run(self, run, result) -> None:
            seen.append("after")

    registry = testing.registry_with(testing.ToyBackbone, Tracker())
    rec = testing.example_recipe(
        registry, "toy", "gene_token_prompt", tmp_path, tiny_h5ad, epochs=2
    )
    rec["trainer"]["tensorboard"] = True
    result = api.run(rec, registry=registry, progress=False, log=lambda m: None)
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert seen == ["before", "epoch1", "epoch2", "after"]  # epochs count from 1
    lines = (result.run_dir / A.TRAIN_LOG).read_text().splitlines()
    assert len(lines) == 2
