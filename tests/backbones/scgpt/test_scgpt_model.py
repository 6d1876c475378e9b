"""scGPT encoder: parity with the reference model, checkpoint layouts, sizes, eval == train."""

from __future__ import annotations

import json

import pytest
import torch

from sctune import testing
from sctune.backbones.scgpt.config import ScGPTConfig
from sctune.backbones.scgpt.model import ScGPTEncoder
from sctune.backbones.scgpt.plugin import ScGPTBackbone
from sctune.backbones.scgpt.weights import write_checkpoint
from sctune.core.capabilities import INSERTION_POINTS, Capability
from sctune.core.errors import CheckpointError


def _reference(reference_cls, vocab):
    return testing.reference_scgpt_model(reference_cls, vocab, nlayers=2, seed=1)


def _ref_outputs(ref, batch):
    # grad enabled: keeps nn.TransformerEncoder off its fused fast path
    out = ref(batch["gene_ids"], batch["values"], batch["padding_mask"], CLS=True)
    tokens = ref._encode(batch["gene_ids"], batch["values"], batch["padding_mask"])
    return out["cell_emb"].detach(), tokens.detach()


def test_parity_with_reference(h, reference_cls):
    vocab = h.tiny_vocab()
    ref = _reference(reference_cls, vocab)
    ours = ScGPTEncoder(
        len(vocab), pad_id=vocab["<pad>"], embsize=32, nheads=4, d_hid=64, nlayers=2, dropout=0.0
    ).eval()
    state = {
        k.replace("in_proj_weight", "Wqkv.weight").replace("in_proj_bias", "Wqkv.bias"): v
        for k, v in ref.state_dict().items()
    }
    state = {k: v for k, v in state.items() if k in ours.state_dict()}
    ours.load_state_dict(state, strict=True)
    batch = h.padded_batch(vocab)
    cell_ref, tok_ref = _ref_outputs(ref, batch)
    with torch.no_grad():
        out = ours(batch)
    assert torch.allclose(out.cell, cell_ref, atol=1e-5)
    keep = ~batch["padding_mask"]
    assert torch.allclose(out.tokens[keep], tok_ref[keep], atol=1e-5)
    assert torch.equal(out.padding_mask, batch["padding_mask"])


@pytest.mark.parametrize("layout", ["flash", "native", "wrapped"])
def test_checkpoint_layouts_from_reference(h, reference_cls, tmp_path, layout):
    vocab = h.tiny_vocab()
    ref = _reference(reference_cls, vocab)
    state = ref.state_dict()  # native layout, plus decoder.*, mvc_decoder.*, cls_decoder.*
    state = {k: v for k, v in state.items() if not k.startswith("cls_decoder.")}
    prefix = "module." if layout == "wrapped" else ""
    folder = write_checkpoint(tmp_path / layout, state, h.TINY_ARGS, vocab, layout, prefix=prefix)
    keys = torch.load(folder / "best_model.pt", weights_only=True).keys()
    marker = {
        "flash": ".self_attn.Wqkv.",
        "native": ".self_attn.in_proj_weight",
        "wrapped": "module.transformer_encoder.layers.0.self_attn._impl.out_proj.",
    }[layout]
    assert any(marker in k for k in keys)
    backbone = ScGPTBackbone()
    model = backbone.build(ScGPTConfig(checkpoint=folder, dropout=0.0)).eval()
    assert layout in model.load_report.layouts
    assert any(k.startswith("mvc_decoder.") for k in model.load_report.ignored)
    batch = h.padded_batch(vocab, seed=3)
    cell_ref, _ = _ref_outputs(ref, batch)
    with torch.no_grad():
        assert torch.allclose(model(batch).cell, cell_ref, atol=1e-5)


def _tiny_checkpoint(h, tmp_path, vocab=None, extra=None, drop=None):
    vocab = vocab or h.tiny_vocab()
    torch.manual_seed(0)
    model = ScGPTEncoder(
        len(vocab), pad_id=vocab["<pad>"], embsize=32, nheads=4, d_hid=64, nlayers=2, dropout=0.0
    )
    state = dict(model.state_dict())
    state["mvc_decoder.W.weight"] = torch.zeros(32, 32)
    state.update(extra or {})
    for k in drop or ():
        del state[k]
    return write_checkpoint(tmp_path / "ckpt", state, h.TINY_ARGS, vocab), model


def test_unexpected_and_missing_keys_fail(h, tmp_path):
    folder, _ = _tiny_checkpoint(
        h,
        tmp_path,
        extra={"foo.weight": torch.zeros(3)},
        drop=["transformer_encoder.layers.1.norm2.bias"],
    )
    with pytest.raises(CheckpointError) as err:
        ScGPTBackbone().build(ScGPTConfig(checkpoint=folder))
    assert "unexpected key: 'foo.weight'" in err.value.message
    assert "missing key: 'transformer_encoder.layers.1.norm2.bias'" in err.value.message


def test_batchnorm_checkpoint_is_refused(h, tmp_path):
    folder, _ = _tiny_checkpoint(h, tmp_path, extra={"bn.weight": torch.ones(32)})
    with pytest.raises(CheckpointError, match="batch norm on the input embeddings"):
        ScGPTBackbone().build(ScGPTConfig(checkpoint=folder))


def test_shape_mismatch_names_vocab(h, tmp_path):
    folder, _ = _tiny_checkpoint(h, tmp_path)
    vocab = h.tiny_vocab()
    vocab.update({"EXTRA1": len(vocab), "EXTRA2": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError) as err:
        ScGPTBackbone().build(ScGPTConfig(checkpoint=folder))
    msg = err.value.message
    assert "shape mismatch: encoder.embedding.weight is [53, 32] in the file, [55, 32]" in msg
    assert "vocab.json has 55 entries" in msg


def test_roundtrip_identical_and_ignored_report(h, tmp_path):
    folder, model = _tiny_checkpoint(h, tmp_path)
    loaded = ScGPTBackbone().build(ScGPTConfig(checkpoint=folder, dropout=0.0)).eval()
    assert loaded.load_report.ignored == ["mvc_decoder.W.weight"]
    assert "mvc_decoder" in loaded.load_report.summary()
    batch = h.padded_batch(h.tiny_vocab())
    with torch.no_grad():
        assert torch.equal(loaded(batch).cell, model.eval()(batch).cell)


def test_recipe_arch_must_match_args(h, tmp_path):
    folder, _ = _tiny_checkpoint(h, tmp_path)
    cfg = ScGPTConfig(checkpoint=folder, embsize=64)
    with pytest.raises(CheckpointError, match="the recipe says 64, args.json says 32"):
        ScGPTBackbone().build(cfg)
    assert ScGPTBackbone().check(cfg)[0][0] == "backbone.checkpoint"
    ScGPTBackbone().build(ScGPTConfig(checkpoint=folder, embsize=32))  # agreeing is fine


def test_missing_specials_appended(h, tmp_path):
    genes_only = {g: i for i, g in enumerate(h.tiny_vocab()) if not g.startswith("<")}
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(genes_only))
    model = ScGPTBackbone().build(
        ScGPTConfig(vocab=path, embsize=32, nheads=4, d_hid=64, nlayers=1)
    )
    assert model.encoder.embedding.num_embeddings == len(genes_only) + 3
    assert model.pad_id == len(genes_only)


def test_full_size_parameter_count(tmp_path):
    vocab = {f"G{i}": i for i in range(60_694)}
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(vocab))
    with torch.device("meta"):
        model = ScGPTBackbone().build(ScGPTConfig(vocab=path), load_weights=False)
    count = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.transformer_encoder.layers[0].parameters())
    assert sum(p.numel() for p in model.encoder.embedding.parameters()) == 31_076_864
    assert sum(p.numel() for p in model.value_encoder.parameters()) == 264_704
    assert layer == 1_577_984
    assert count == 31_076_864 + 1_024 + 264_704 + 12 * 1_577_984


def test_eval_equals_train_with_zero_dropout(h):
    vocab = h.tiny_vocab()
    model = ScGPTEncoder(
        len(vocab), pad_id=vocab["<pad>"], embsize=32, nheads=4, d_hid=64, nlayers=2, dropout=0.0
    )
    batch = h.padded_batch(vocab)
    train = model.train()(batch).cell
    with torch.no_grad():
        ev = model.eval()(batch).cell
    assert torch.allclose(train, ev, atol=1e-6)


def test_surfaces_and_slots_are_used(h):
    vocab = h.tiny_vocab()
    backbone = ScGPTBackbone()
    model = ScGPTEncoder(
        len(vocab), pad_id=vocab["<pad>"], embsize=32, nheads=4, d_hid=64, nlayers=2, dropout=0.0
    ).eval()
    surf = backbone.surfaces(model)
    assert surf.provides() == INSERTION_POINTS
    assert ScGPTBackbone.provides == frozenset(Capability)
    assert set(surf.notes) == {c.value for c in INSERTION_POINTS}
    site = surf.blocks[0].projections["v"]
    assert site.module is model.transformer_encoder.layers[0].self_attn.Wqkv
    assert site.rows == slice(64, 96)
    batch = h.padded_batch(vocab)
    with torch.no_grad():
        base = model(batch)
        # a wrapper on Wqkv must run (the attention calls the module)
        calls = []
        attn = model.transformer_encoder.layers[1].self_attn
        inner = attn.Wqkv
        attn.Wqkv = torch.nn.Sequential(inner)
        attn.Wqkv.register_forward_hook(lambda *a: calls.append(1))
        model(batch)
        assert calls
        attn.Wqkv = inner
        # prompts: inserted after <cls>, stripped at the end
        surf.blocks[0].prompt.set(torch.nn.Parameter(torch.zeros(5, 32)))
        out = model(batch)
        assert out.tokens.shape == base.tokens.shape
        assert not torch.allclose(out.cell, base.cell)


def test_slots_change_the_output(h):
    vocab = h.tiny_vocab()
    model = ScGPTEncoder(
        len(vocab), pad_id=vocab["<pad>"], embsize=32, nheads=4, d_hid=64, nlayers=2, dropout=0.0
    ).eval()
    surf = ScGPTBackbone().surfaces(model)
    batch = h.padded_batch(vocab)
    with torch.no_grad():
        base = model(batch).cell
        for slot in (surf.input_embedding, surf.blocks[1].attention_output):
            slot.adapters.append(torch.nn.Linear(32, 32))
            assert not torch.allclose(model(batch).cell, base)
            del slot.adapters[0]
            assert torch.equal(model(batch).cell, base)
        surf.blocks[0].ffn_parallel.branches.append(torch.nn.Linear(32, 32))
        assert not torch.allclose(model(batch).cell, base)


def test_mean_pooling_averages_the_gene_tokens_only(h):
    """``pooling: mean``: the cell embedding is the mean of the gene tokens' outputs (not <cls>,
    not padding); the per-token outputs are those of ``pooling: cls``, whose cell is <cls>."""
    vocab = h.tiny_vocab()
    kw: dict = {"embsize": 32, "nheads": 4, "d_hid": 64, "nlayers": 2, "dropout": 0.0}
    torch.manual_seed(0)
    cls_model = ScGPTEncoder(len(vocab), pad_id=vocab["<pad>"], **kw).eval()
    mean_model = ScGPTEncoder(len(vocab), pad_id=vocab["<pad>"], pooling="mean", **kw).eval()
    mean_model.load_state_dict(cls_model.state_dict())
    batch = h.padded_batch(vocab, seed=3)
    with torch.no_grad():
        a, b = cls_model(batch), mean_model(batch)
    torch.testing.assert_close(a.tokens, b.tokens)
    torch.testing.assert_close(a.cell, a.tokens[:, 0])
    pad = batch["gene_ids"] == vocab["<pad>"]
    assert pad.any()  # the batch has padding, so excluding it matters
    for i in range(len(pad)):
        genes = a.tokens[i, 1:][~pad[i, 1:]]
        torch.testing.assert_close(b.cell[i], genes.mean(0))


def test_token_stream_slot_sees_gene_plus_value_embeddings(h):
    """``stream_slot`` (TOKEN_STREAM, where scGPT's DSBN sits) receives exactly
    ``encoder(ids) + value_encoder(values)``, before any prompt tokens; what it returns is what
    the first layer reads."""
    vocab = h.tiny_vocab()
    model = ScGPTEncoder(
        len(vocab), pad_id=vocab["<pad>"], embsize=32, nheads=4, d_hid=64, nlayers=2, dropout=0.0
    ).eval()
    surf = ScGPTBackbone().surfaces(model)
    assert surf.token_stream is model.stream_slot
    assert Capability.TOKEN_STREAM in surf.provides()
    batch = h.padded_batch(vocab)
    seen: list[torch.Tensor] = []
    hook = model.stream_slot.register_forward_hook(lambda m, a, out: seen.append(a[0]))
    surf.blocks[0].prompt.set(torch.nn.Parameter(torch.zeros(3, 32)))  # inserted after the slot
    with torch.no_grad():
        model(batch)
        want = model.encoder(batch["gene_ids"]) + model.value_encoder(batch["values"])
    hook.remove()
    assert len(seen) == 1 and seen[0].shape == want.shape
    torch.testing.assert_close(seen[0], want, rtol=0, atol=0)

    class Shift(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 0.5

    layer0: list[torch.Tensor] = []
    model.transformer_encoder.layers[0].register_forward_hook(
        lambda m, a, out: layer0.append(a[0])
    )
    surf.token_stream.adapters.append(Shift())
    with torch.no_grad():
        model(batch)
    prompts = 3
    shifted = torch.cat([layer0[0][:, :1], layer0[0][:, 1 + prompts :]], dim=1)
    torch.testing.assert_close(shifted, want + 0.5, rtol=0, atol=0)
