"""scBERT files: key layout, strict accounting, round trips, gene2vec and gene-order checks."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from sctune.backbones.scbert.config import ScBERTConfig
from sctune.backbones.scbert.weights import save_checkpoint
from sctune.core.errors import CheckpointError


def _tokens(n: int = 20) -> torch.Tensor:
    return torch.randint(0, 6, (2, n + 1), generator=torch.Generator().manual_seed(3))


def _cell(model, x):
    model.eval()
    with torch.no_grad():
        return model({"tokens": x}).tokens


def test_tiny_checkpoint_has_scbert_layout(tiny) -> None:
    obj = torch.load(tiny["checkpoint"], weights_only=True)
    state = obj["model_state_dict"]
    expected_shapes = {
        "token_emb.weight": (7, 16),
        "pos_emb.emb.weight": (21, 16),
        "performer.net.layers.0.0.norm.weight": (16,),
        "performer.net.layers.0.0.fn.to_q.weight": (16, 16),
        "performer.net.layers.1.0.fn.to_v.weight": (16, 16),
        "performer.net.layers.0.0.fn.to_out.weight": (16, 16),
        "performer.net.layers.0.0.fn.to_out.bias": (16,),
        "performer.net.layers.0.0.fn.fast_attention.projection_matrix": (16, 8),
        "performer.net.layers.1.1.norm.bias": (16,),
        "performer.net.layers.1.1.fn.fn.w1.weight": (64, 16),
        "performer.net.layers.1.1.fn.fn.w2.weight": (16, 64),
        "performer.calls_since_last_redraw": (),
        "norm.weight": (16,),
        "to_out.weight": (7, 16),
        "to_out.bias": (7,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("stem.") or "slot" in k or "to_q.bias" in k for k in state)
    assert len(state) == 3 + 2 * 14 + 4  # embeddings + counter, 14 per layer, norm + LM head
    torch.testing.assert_close(state["pos_emb.emb.weight"][-1], torch.zeros(16))
    g2v = np.load(tiny["gene2vec"])
    torch.testing.assert_close(state["pos_emb.emb.weight"][:-1], torch.from_numpy(g2v))


def test_round_trip_save_load_identical(backbone, tiny_config, tmp_path: Path) -> None:
    model = backbone.build(tiny_config)
    with torch.no_grad():
        model.layers[0][0].fn.to_q.weight.add_(0.1)  # differ from the file
    path = save_checkpoint(model, tmp_path / "copy.pth", epoch=3)
    again = backbone.build(tiny_config.model_copy(update={"checkpoint": path}))
    x = _tokens()
    torch.testing.assert_close(_cell(again, x), _cell(model, x))
    assert any("epoch" in n for n in again.load_notes)
    assert not again.pos_emb.emb.weight.requires_grad


def _write(tmp_path: Path, state: dict, name: str = "edited.pth", **extra) -> Path:
    path = tmp_path / name
    torch.save({"model_state_dict": state, **extra}, path)
    return path


def _state(tiny) -> dict[str, torch.Tensor]:
    return torch.load(tiny["checkpoint"], weights_only=True)["model_state_dict"]


def test_ddp_prefix_and_training_entries_accepted(backbone, tiny, tmp_path) -> None:
    state = {f"module.{k}": v for k, v in _state(tiny).items()}
    path = _write(tmp_path, state, epoch=1, optimizer_state_dict={"state": {}}, losses=[0.5])
    model = backbone.build(ScBERTConfig(**{**tiny, "checkpoint": path}))
    ref = backbone.build(ScBERTConfig(**tiny))
    x = _tokens()
    torch.testing.assert_close(_cell(model, x), _cell(ref, x))


def test_finetuned_classifier_reported_not_used(backbone, tiny, tmp_path) -> None:
    state = _state(tiny)
    del state["to_out.weight"], state["to_out.bias"]
    state["to_out.conv1.weight"] = torch.zeros(1, 1, 1, 16)
    state["to_out.conv1.bias"] = torch.zeros(1)
    for i, (o, n) in enumerate([(512, 21), (128, 512), (3, 128)], start=1):
        state[f"to_out.fc{i}.weight"] = torch.zeros(o, n)
        state[f"to_out.fc{i}.bias"] = torch.zeros(o)
    model = backbone.build(ScBERTConfig(**{**tiny, "checkpoint": _write(tmp_path, state)}))
    assert any("fine-tuned" in n and "ignored" in n for n in model.load_notes)
    assert "to_out.fc1" not in dict(model.named_modules())


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.pop("performer.net.layers.1.0.fn.to_k.weight"), "missing keys"),
        (lambda s: s.update({"performer.extra.weight": torch.zeros(2)}), "unexpected keys"),
        (
            lambda s: s.update({"norm.weight": torch.zeros(17)}),
            "shape mismatch: norm.weight is [17] in the file, [16] in the model",
        ),
        (
            lambda s: s.update({"performer.net.layers.0.0.fn.to_q.bias": torch.zeros(16)}),
            "'performer.net.layers.0.0.fn.to_q.bias'",
        ),
    ],
)
def test_strict_key_accounting(backbone, tiny, tmp_path, edit, expected) -> None:
    state = _state(tiny)
    edit(state)
    cfg = ScBERTConfig(**{**tiny, "checkpoint": _write(tmp_path, state)})
    with pytest.raises(CheckpointError, match="does not fit backbone 'scbert'") as err:
        backbone.build(cfg)
    assert expected in err.value.message


def test_gene_order_length_must_match_position_table(backbone, tiny, tmp_path) -> None:
    order = tmp_path / "order.txt"
    order.write_text("\n".join(Path(tiny["gene_order"]).read_text().split()[:19]) + "\n")
    cfg = ScBERTConfig(**{**tiny, "gene_order": order, "gene2vec": None})
    with pytest.raises(CheckpointError) as err:
        backbone.build(cfg)
    assert "21 rows" in err.value.message and "20 genes" in err.value.message
    assert "'gene_order' has 19" in err.value.message


def test_gene2vec_overrides_and_shape_checked(backbone, tiny, tmp_path) -> None:
    g2v = np.full((20, 16), 0.25, dtype=np.float32)
    np.save(tmp_path / "g.npy", g2v)
    model = backbone.build(ScBERTConfig(**{**tiny, "gene2vec": tmp_path / "g.npy"}))
    assert torch.all(model.pos_emb.emb.weight[:-1] == 0.25)
    assert torch.all(model.pos_emb.emb.weight[-1] == 0)
    np.save(tmp_path / "bad.npy", np.zeros((20, 15), dtype=np.float32))
    with pytest.raises(CheckpointError, match=r"shape \[20, 15\], expected \[20, 16\]"):
        backbone.build(ScBERTConfig(**{**tiny, "gene2vec": tmp_path / "bad.npy"}))


def test_missing_files_named(backbone, tiny, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="'.*nope.txt' not found") as err:
        backbone.build(ScBERTConfig(**{**tiny, "gene_order": tmp_path / "nope.txt"}))
    assert "16,906" in (err.value.hint or "")
    cfg = ScBERTConfig(checkpoint=tmp_path / "x.pth", gene2vec=tmp_path / "g.npy")
    problems = dict(backbone.check(cfg))
    assert "not found" in problems["backbone.checkpoint"]
    assert "not found" in problems["backbone.gene2vec"]
    assert "required with a checkpoint" in problems["backbone.gene_order"]
    assert backbone.check(ScBERTConfig(**tiny)) == []


def test_non_weights_pickle_refused(backbone, tiny, tmp_path) -> None:
    args = argparse.Namespace(lr=1e-4)  # a training script's args: not a plain tensor container
    torch.save({"model_state_dict": _state(tiny), "args": args}, tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        backbone.build(ScBERTConfig(**{**tiny, "checkpoint": tmp_path / "p.pth"}))


def test_fingerprint_hashes_files(backbone, tiny_config) -> None:
    fp = backbone.fingerprint(tiny_config)
    assert set(fp) == {"checkpoint", "gene2vec", "gene_order"}
    assert all(v.startswith("sha256:") and len(v) == 71 for v in fp.values())
