"""scGPT's masked expression objective (GEP) against the reference TransformerModel."""

from __future__ import annotations

import torch

from sctune import testing
from sctune.backbones.scgpt.model import ScGPTEncoder
from sctune.backbones.scgpt.objective import ScGPTMaskedExpression


def _pair(reference_cls, vocab):
    ref = testing.reference_scgpt_model(reference_cls, vocab, nlayers=2, seed=3)
    ours = ScGPTEncoder(
        len(vocab), pad_id=vocab["<pad>"], embsize=32, nheads=4, d_hid=64, nlayers=2, dropout=0.0
    ).eval()
    state = {
        k.replace("in_proj_weight", "Wqkv.weight").replace("in_proj_bias", "Wqkv.bias"): v
        for k, v in ref.state_dict().items()
    }
    ours.load_state_dict({k: v for k, v in state.items() if k in ours.state_dict()})
    objective = ScGPTMaskedExpression(32, pad_id=vocab["<pad>"])
    assert objective.load(ref.state_dict()), "decoder.fc.* of the reference did not load"
    return ref, ours, objective


def test_decoder_and_masked_loss_match_the_reference(h, reference_cls):
    vocab = h.tiny_vocab()
    ref, ours, objective = _pair(reference_cls, vocab)
    batch = h.padded_batch(vocab)
    masked = objective.mask(batch, 0.4, torch.Generator().manual_seed(0))
    out = ref(
        masked.batch["gene_ids"], masked.batch["values"], masked.batch["padding_mask"], MVC=False
    )
    with torch.no_grad():
        pred = objective.decode(ours(masked.batch).tokens)
    torch.testing.assert_close(pred, out["mlm_output"].detach(), atol=1e-5, rtol=1e-5)
    # scGPT's masked_mse_loss: mean squared error over the masked positions
    want = torch.nn.functional.mse_loss(
        out["mlm_output"].detach()[masked.positions], batch["values"][masked.positions]
    )
    loss, count, correct = objective.per_cell(pred, masked)
    torch.testing.assert_close(loss.sum() / count.sum(), want, atol=1e-5, rtol=1e-5)
    assert torch.isnan(correct).all()  # a regression objective has no accuracy


def test_masking_never_touches_cls_or_padding_and_keeps_the_ratio(h):
    vocab = h.tiny_vocab()
    batch = h.padded_batch(vocab, lengths=(21, 11, 2, 40))
    before = {k: v.clone() for k, v in batch.items()}
    objective = ScGPTMaskedExpression(8, pad_id=vocab["<pad>"])
    masked = objective.mask(batch, 0.4, torch.Generator().manual_seed(1))
    assert all(torch.equal(before[k], batch[k]) for k in batch)  # not in place
    pos = masked.positions
    assert not pos[:, 0].any() and not (pos & batch["padding_mask"]).any()
    genes = (~batch["padding_mask"]).sum(1) - 1
    expected = torch.clamp((genes.float() * 0.4).round(), min=1)
    assert torch.equal(pos.sum(1).float(), expected)
    assert (masked.batch["values"][pos] == -1).all()
    assert torch.equal(masked.batch["values"][~pos], batch["values"][~pos])
    assert torch.equal(masked.target[pos], batch["values"][pos])
