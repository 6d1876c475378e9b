"""The adapter correctness properties, demonstrated on a checkpoint built by the reference scGPT.

The reference ``scgpt`` 0.2.4 ``TransformerModel`` (test oracle, installed ``--no-deps``) is built
tiny, its state_dict is written as a real scGPT checkpoint folder (flash ``Wqkv`` layout), and
sctune loads that folder. Each property of issue 3 is then checked against that model:
LoRA applied exactly once (train / eval / merged), no fused path bypassing an adapter, prompts
never moving positions, zero-initialised adapters reproducing the reference output, and the
gradient audit at the first step.
"""

from __future__ import annotations

import pytest
import torch

from sctune import testing
from sctune.adapters.gene_encoder_prompt.plugin import GeneEncoderPrompt
from sctune.adapters.gene_token_prompt.plugin import GeneTokenPrompt
from sctune.adapters.lora.plugin import LoRA
from sctune.adapters.prefix_prompt.plugin import PrefixPrompt
from sctune.backbones.scgpt.plugin import ScGPTBackbone
from sctune.backbones.scgpt.weights import write_checkpoint
from sctune.core.audit import audit_gradients

ADAPTERS = [GeneTokenPrompt, GeneEncoderPrompt, PrefixPrompt, LoRA]
GENES = [f"GENE{i}" for i in range(30)]
ARGS = {
    "embsize": 32,
    "nheads": 4,
    "d_hid": 64,
    "nlayers": 3,
    "n_layers_cls": 3,
    "dropout": 0.0,
    "pad_token": "<pad>",
    "pad_value": -2,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cls = testing.reference_scgpt_class()
    if cls is None:
        pytest.skip("reference scgpt not installed (pip install --no-deps scgpt==0.2.4)")
    vocab = {g: i for i, g in enumerate(GENES)}
    vocab.update({"<pad>": len(GENES), "<cls>": len(GENES) + 1, "<eoc>": len(GENES) + 2})
    ref = testing.reference_scgpt_model(cls, vocab, nlayers=3, seed=0)
    folder = tmp_path_factory.mktemp("scgpt_ref")
    state = {
        k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v for k, v in ref.state_dict().items()
    }
    write_checkpoint(folder, state, ARGS, vocab, layout="flash")

    g = torch.Generator().manual_seed(1)
    lengths = (14, 9, 5)
    ids = torch.full((3, 14), vocab["<pad>"], dtype=torch.long)
    values = torch.full((3, 14), -2.0)
    for r, n in enumerate(lengths):
        ids[r, 0], values[r, 0] = vocab["<cls>"], 0.0
        ids[r, 1:n] = torch.randperm(len(GENES), generator=g)[: n - 1]
        values[r, 1:n] = torch.randint(1, 51, (n - 1,), generator=g).float()
    batch = {"gene_ids": ids, "values": values, "padding_mask": ids == vocab["<pad>"]}
    with torch.no_grad():
        expected = ref(ids, values, batch["padding_mask"], CLS=True)["cell_emb"]
    return folder, batch, expected


def _build(folder, adapter_cls=None, **options):
    backbone = ScGPTBackbone()
    config = backbone.config_cls(checkpoint=folder, dropout=0.0)
    module = backbone.build(config)
    for p in module.parameters():
        p.requires_grad_(False)
    before = {id(p) for p in module.parameters()}
    handle = None
    if adapter_cls is not None:
        adapter = adapter_cls()
        handle = adapter.apply(module, backbone.surfaces(module), adapter.config_cls(**options))
        for p in handle.parameters:
            p.requires_grad_(True)
    new = [p for p in module.parameters() if id(p) not in before]
    return module, handle, new


def _perturb(params, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


def test_loaded_reference_checkpoint_matches_reference(reference):
    folder, batch, expected = reference
    module, _, _ = _build(folder)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(batch).cell, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("cls", "options"),
    [(GeneTokenPrompt, {"zero_init": True}), (GeneEncoderPrompt, {"zero_init": True}), (LoRA, {})],
    ids=["gene_token_prompt", "gene_encoder_prompt", "lora"],
)
def test_zero_initialised_adapters_reproduce_the_reference(reference, cls, options):
    folder, batch, expected = reference
    module, _, new = _build(folder, cls, **options)
    assert new, "the adapter created no tensors"
    for train in (True, False):
        module.train(train)
        with torch.no_grad():
            torch.testing.assert_close(module(batch).cell, expected, atol=1e-5, rtol=0)


def test_zero_prompts_are_not_an_identity(reference):
    """methods.md 6: zero prompt tokens still produce keys/values (b_k, b_v) and take attention."""
    folder, batch, expected = reference
    module, _, _ = _build(folder, PrefixPrompt, num_tokens=4)
    module.eval()
    with torch.no_grad():
        assert not torch.allclose(module(batch).cell, expected, atol=1e-4)


@pytest.mark.parametrize("cls", ADAPTERS, ids=lambda c: c.name)
def test_no_fast_path_bypasses_adapters(reference, cls):
    """Eval + no_grad with non-zero adapter weights: differs from adapter-free, equals train mode."""
    folder, batch, expected = reference
    options = {"num_tokens": 4} if cls is PrefixPrompt else {}
    module, handle, new = _build(folder, cls, **options)
    _perturb(new)
    module.train()
    train_out = module(batch).cell.detach()
    module.eval()
    with torch.no_grad():
        eval_out = module(batch).cell
    torch.testing.assert_close(eval_out, train_out, atol=1e-5, rtol=0)
    assert (eval_out - expected).abs().max() > 1e-3, "the adapter had no effect in evaluation"
    if handle.merge is not None:
        handle.merge()
        with torch.no_grad():
            torch.testing.assert_close(module(batch).cell, eval_out, atol=1e-5, rtol=0)
        handle.unmerge()


def test_lora_delta_is_applied_exactly_once(reference):
    """W0 x + s B A x once: train == eval == merged, and merged weights hold W0 + s B A exactly."""
    folder, batch, expected = reference
    module, handle, new = _build(folder, LoRA)
    _perturb(new)
    wqkv = module.transformer_encoder.layers[0].self_attn.Wqkv
    w0 = wqkv.weight.detach().clone()
    module.eval()
    with torch.no_grad():
        unmerged = module(batch).cell
    handle.merge()
    delta = wqkv.weight.detach() - w0
    rank, d = 8, ARGS["embsize"]
    scale = 1.0 / rank
    a_q, b_q = wqkv.lora_A_q.detach(), wqkv.lora_B_q.detach()
    torch.testing.assert_close(delta[:d], scale * b_q @ a_q, atol=1e-6, rtol=0)
    assert delta[d : 2 * d].abs().max() == 0  # K rows untouched
    with torch.no_grad():
        torch.testing.assert_close(module(batch).cell, unmerged, atol=1e-5, rtol=0)
    handle.merge()  # merging twice must not add the delta twice
    torch.testing.assert_close(wqkv.weight.detach() - w0, delta, atol=0, rtol=0)
    handle.unmerge()
    torch.testing.assert_close(wqkv.weight.detach(), w0, atol=1e-6, rtol=0)


def test_prompts_never_move_positions(reference):
    folder, batch, _ = reference
    module, _, new = _build(folder, PrefixPrompt, num_tokens=5, layers=[1, 2])
    _perturb(new)
    out = module(batch)
    assert out.tokens.shape[:2] == batch["gene_ids"].shape
    assert torch.equal(out.padding_mask, batch["padding_mask"])


@pytest.mark.parametrize("cls", ADAPTERS, ids=lambda c: c.name)
def test_gradient_audit_on_reference_checkpoint(reference, cls):
    folder, batch, _ = reference
    options = {"num_tokens": 4} if cls is PrefixPrompt else {}
    module, handle, new = _build(folder, cls, **options)
    _perturb(new)  # non-zero LoRA B, so LoRA A gets a gradient too
    module.train()
    module(batch).cell.pow(2).sum().backward()
    audit = audit_gradients(module)
    assert audit.ok, audit.as_dict()
    assert {r["name"] for r in audit.rows} == {
        n for n, p in module.named_parameters() if any(p is q for q in handle.parameters)
    }
