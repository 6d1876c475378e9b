"""trainer.activation_checkpointing / trainer.compile / bucketing keys: validated, and exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sctune import api
from sctune.core.errors import RecipeError
from sctune.core.trainer import checkpoint_units, enable_activation_checkpointing

REGISTRY = api.get_registry()


def _scgpt(tmp_path: Path, dropout: float = 0.2) -> tuple[torch.nn.Module, dict]:
    backbone = REGISTRY.instance("backbone", "scgpt")
    vocab = {f"G{i}": i for i in range(50)} | {"<pad>": 50, "<cls>": 51, "<eoc>": 52}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    cfg = backbone.config_cls.model_validate(
        {"vocab": str(tmp_path / "vocab.json"), "embsize": 16, "nheads": 2, "d_hid": 16,
         "nlayers": 3, "dropout": dropout, "attention_dropout": dropout}
    )  # fmt: skip
    torch.manual_seed(0)
    module = backbone.build(cfg)
    ids = torch.randint(0, 50, (4, 12))
    ids[:, 0] = 51
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[2, 8:] = True
    batch = {"gene_ids": ids, "values": torch.rand(4, 12) * 50, "padding_mask": mask}
    return module, batch


def test_activation_checkpointing_recomputes_layers_with_identical_gradients(
    tmp_path: Path,
) -> None:
    module, batch = _scgpt(tmp_path)
    module.train()
    calls: list[int] = []
    for layer in module.layers:
        layer.self_attn.register_forward_hook(lambda *a: calls.append(1))
    grads = []
    for ckpt in (False, True):
        if ckpt:
            assert enable_activation_checkpointing(module) == 3
            assert enable_activation_checkpointing(module) == 3  # idempotent
        module.zero_grad(set_to_none=True)
        calls.clear()
        torch.manual_seed(1)  # the same dropout masks; checkpointing replays them
        module(batch).cell.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
        assert len(calls) == 3 * (2 if ckpt else 1)  # each layer ran again in the backward
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-6)
    module.eval()
    calls.clear()
    with torch.no_grad():
        module(batch)
    assert len(calls) == 3  # no recomputation outside training


def test_checkpoint_units_of_every_backbone(tmp_path: Path) -> None:
    module, _ = _scgpt(tmp_path)
    assert checkpoint_units(module) == list(module.layers)
    assert checkpoint_units(torch.nn.Linear(2, 2)) == []
    pairs = torch.nn.Module()
    pairs.layers = torch.nn.ModuleList(  # scBERT's (attention, feed-forward) pairs
        torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]) for _ in range(2)
    )
    assert len(checkpoint_units(pairs)) == 4


def test_speed_and_cache_keys_are_validated_together(tiny_h5ad: Path, tmp_path: Path) -> None:
    from sctune import testing

    rec = testing.example_recipe(REGISTRY, "scgpt", "lora", tmp_path, tiny_h5ad)
    rec["trainer"].update(
        {"activation_checkpointing": "often", "compile": "yes please", "bucket_pool": 0,
         "length_bucketing": "sometimes"}
    )  # fmt: skip
    rec["data"].update({"cache_tokens": "maybe", "cache_dir": ""})
    with pytest.raises(RecipeError) as e:
        api.load(rec, registry=REGISTRY)
    for key in (
        "trainer.activation_checkpointing", "trainer.compile", "trainer.bucket_pool",
        "trainer.length_bucketing", "data.cache_tokens", "data.cache_dir",
    ):  # fmt: skip
        assert key in str(e.value)
