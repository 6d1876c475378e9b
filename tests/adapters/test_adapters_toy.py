"""The four scPEFT adapters on the toy encoder: exactness, gradients, placement, combinations."""

from __future__ import annotations

import pytest
import torch

from sctune.adapters.gene_encoder_prompt.plugin import GeneEncoderPrompt
from sctune.adapters.gene_token_prompt.plugin import GeneTokenPrompt
from sctune.adapters.lora.layer import LoRALinear
from sctune.adapters.lora.plugin import LoRA
from sctune.adapters.prefix_prompt.plugin import PrefixPrompt
from sctune.core.errors import CompatibilityError, RecipeError

ALL = [GeneTokenPrompt, GeneEncoderPrompt, PrefixPrompt, LoRA]
ALL_IDS = [c.name for c in ALL]


def run(module, batch, *, train: bool):
    module.train(train)
    return module(batch).cell


# (a) LoRA applied exactly once, merged or not -------------------------------------------------


@pytest.mark.parametrize("fixture", ["toy", "toy_unpacked"])
def test_lora_once_train_eval_merged(kit, fixture, request):
    module, surfaces = request.getfixturevalue(fixture)
    batch = kit.batch()
    with torch.no_grad():
        base = run(module, batch, train=False)
    handle = kit.apply(LoRA, module, surfaces, targets=["q", "k", "v", "o", "ffn_in", "ffn_out"])
    with torch.no_grad():
        assert torch.allclose(run(module, batch, train=False), base, atol=0)  # B = 0: identity
    kit.randomize([p for p in handle.parameters if p.dim() == 2])
    train_out = run(module, batch, train=True)
    with torch.no_grad():
        eval_out = run(module, batch, train=False)
        handle.merge()
        merged = run(module, batch, train=False)
        handle.merge()  # idempotent: never folds twice
        merged_again = run(module, batch, train=False)
        handle.unmerge()
        unmerged = run(module, batch, train=False)
    assert not torch.allclose(eval_out, base, atol=1e-3)
    torch.testing.assert_close(train_out.detach(), eval_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged, eval_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged_again, merged, rtol=0, atol=0)
    torch.testing.assert_close(unmerged, eval_out, rtol=1e-5, atol=1e-5)
    handle.merge()
    handle.unmerge()
    wrapper = module.blocks[0].o if fixture == "toy_unpacked" else module.blocks[0].qkv
    assert isinstance(wrapper, LoRALinear)
    assert not wrapper.merged


def test_lora_packed_slices_leave_k_untouched(kit, toy):
    module, surfaces = toy
    handle = kit.apply(LoRA, module, surfaces)
    kit.randomize(p for p in handle.parameters if p.dim() == 2)
    wrapper = module.blocks[0].qkv
    x = torch.randn(5, 16)
    delta = wrapper(x) - torch.nn.functional.linear(x, wrapper.weight, wrapper.bias)
    assert delta[:, :16].abs().sum() > 0
    assert delta[:, 32:].abs().sum() > 0
    assert torch.equal(delta[:, 16:32], torch.zeros(5, 16))
    assert sorted(n for n, _ in wrapper.named_parameters()) == [
        "bias",
        "lora_A_q",
        "lora_A_v",
        "lora_B_q",
        "lora_B_v",
        "weight",
    ]
    assert (wrapper.in_features, wrapper.out_features) == (16, 48)
    # backbone keys keep their names after wrapping; LoRA keys are stable
    keys = set(module.state_dict())
    assert "blocks.0.qkv.weight" in keys
    assert "blocks.3.qkv.lora_B_v" in keys


def test_lora_dropout_only_in_train(kit, toy):
    module, surfaces = toy
    handle = kit.apply(LoRA, module, surfaces, dropout=0.5)
    kit.randomize(p for p in handle.parameters if p.dim() == 2)
    batch = kit.batch()
    with torch.no_grad():
        e1, e2 = run(module, batch, train=False), run(module, batch, train=False)
        t1 = run(module, batch, train=True)
    assert torch.equal(e1, e2)
    assert not torch.allclose(t1, e1)


# (b) eval + no_grad never bypasses adapters ---------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=ALL_IDS)
def test_eval_no_grad_runs_adapters(kit, toy, cls):
    module, surfaces = toy
    batch = kit.batch()
    with torch.no_grad():
        base = run(module, batch, train=False)
    handle = kit.apply(cls, module, surfaces)
    kit.randomize(handle.parameters)
    train_out = run(module, batch, train=True)
    with torch.no_grad():
        eval_out = run(module, batch, train=False)
    assert not torch.allclose(eval_out, base, atol=1e-3)
    torch.testing.assert_close(eval_out, train_out.detach(), rtol=0, atol=1e-6)


# (c) prompts never change the positions seen by pooling and decoders --------------------------


@pytest.mark.parametrize("layers", ["all", [1, 3], [2]])
def test_prompts_are_stripped(kit, toy, layers):
    module, surfaces = toy
    batch = kit.batch()
    handle = kit.apply(PrefixPrompt, module, surfaces, num_tokens=5, layers=layers)
    assert handle.info["layers"] == ([0, 1, 2, 3] if layers == "all" else layers)
    out = module.eval()(batch)
    assert out.tokens.shape == (3, 7, 16)
    assert torch.equal(out.padding_mask, batch["padding_mask"])
    assert all(tuple(p.shape) == (5, 16) for p in handle.parameters)


# (d) zero-initialised adapters reproduce the backbone; zero prompts do not ----------------------


@pytest.mark.parametrize(
    ("cls", "options"),
    [(GeneTokenPrompt, {"zero_init": True}), (GeneEncoderPrompt, {"zero_init": True}), (LoRA, {})],
    ids=["token", "encoder", "lora"],
)
def test_zero_init_is_identity(kit, toy, cls, options):
    module, surfaces = toy
    batch = kit.batch()
    with torch.no_grad():
        base = run(module, batch, train=False)
        kit.apply(cls, module, surfaces, **options)
        assert torch.equal(run(module, batch, train=False), base)


@pytest.mark.parametrize("cls", [GeneTokenPrompt, GeneEncoderPrompt], ids=["token", "encoder"])
def test_default_init_is_not_identity(kit, toy, cls):
    module, surfaces = toy
    batch = kit.batch()
    with torch.no_grad():
        base = run(module, batch, train=False)
        kit.apply(cls, module, surfaces)
        assert not torch.allclose(run(module, batch, train=False), base, atol=1e-4)


def test_zero_prompts_are_not_identity(kit, toy):
    module, surfaces = toy
    batch = kit.batch()
    with torch.no_grad():
        base = run(module, batch, train=False)
        handle = kit.apply(PrefixPrompt, module, surfaces)
        assert all(torch.count_nonzero(p) == 0 for p in handle.parameters)
        assert not torch.allclose(run(module, batch, train=False), base, atol=1e-4)


def test_prefix_normal_init(kit, toy):
    module, surfaces = toy
    handle = kit.apply(PrefixPrompt, module, surfaces, init="normal", num_tokens=200)
    std = torch.stack([p.detach().std() for p in handle.parameters]).mean()
    assert 0.015 < float(std) < 0.025


# (f) exactly the handle's tensors get gradients -----------------------------------------------


def _grads_after_step(module, batch, handle):
    params = handle.parameters
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(2):  # first step moves LoRA B / zero up-projections off zero
        opt.zero_grad()
        module.train()
        module(batch).cell.pow(2).sum().backward()
        if _ == 0:
            opt.step()
    return {id(p) for p in params}


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (GeneTokenPrompt, {}),
        (GeneTokenPrompt, {"zero_init": True}),
        (GeneEncoderPrompt, {}),
        (GeneEncoderPrompt, {"mlp_adapter": False, "layers": "all"}),
        (PrefixPrompt, {"layers": [1, 2]}),
        (LoRA, {}),
        (LoRA, {"targets": ["k", "o", "ffn_in", "ffn_out"], "train_bias": False}),
    ],
)
def test_only_handle_tensors_get_gradients(kit, toy, cls, options):
    module, surfaces = toy
    handle = kit.apply(cls, module, surfaces, **options)
    assert handle.parameters
    assert len({id(p) for p in handle.parameters}) == len(handle.parameters)
    trained = _grads_after_step(module, kit.batch(), handle)
    for name, p in module.named_parameters():
        if id(p) in trained:
            assert p.grad is not None, name
            assert torch.count_nonzero(p.grad) > 0, name
        else:
            assert p.grad is None, name
    assert {id(p) for p in module.parameters() if p.requires_grad} == trained
    assert handle.info["n_parameters"] == sum(p.numel() for p in handle.parameters)


# formulas at toy size ---------------------------------------------------------------------------


def _count(handle):
    return sum(p.numel() for p in handle.parameters)


def test_counts_follow_the_formulas(kit):
    d, k = 16, 4  # ratio 0.25
    bottleneck = 2 * d * k + k + d
    cases = [
        (GeneTokenPrompt, {}, bottleneck),
        (GeneTokenPrompt, {"preset": "v2"}, 2 * d * d + 2 * d),
        (GeneEncoderPrompt, {}, 2 * 2 * bottleneck),  # first half of 4 blocks, 2 adapters each
        (GeneEncoderPrompt, {"mlp_adapter": False, "layers": "all"}, 4 * bottleneck),
        (PrefixPrompt, {}, 64 * d * 4),
        (PrefixPrompt, {"num_tokens": 8, "layers": [0, 1]}, 8 * d * 2),
        (LoRA, {}, 4 * (2 * (8 * d + d * 8) + 3 * d)),
        (LoRA, {"train_bias": False, "rank": 2}, 4 * 2 * (2 * d + d * 2)),
    ]
    for cls, options, expected in cases:
        torch.manual_seed(0)
        module = kit.ToyEncoder()
        assert _count(kit.apply(cls, module, kit.surfaces(module), **options)) == expected, cls


# combinations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pair",
    [
        (GeneTokenPrompt, GeneEncoderPrompt),
        (GeneEncoderPrompt, GeneEncoderPrompt),
        (LoRA, GeneEncoderPrompt),
        (PrefixPrompt, LoRA),
        (GeneTokenPrompt, PrefixPrompt),
    ],
    ids=lambda p: "+".join(c.name for c in p),
)
def test_two_adapters_stack(kit, toy, pair):
    module, surfaces = toy
    batch = kit.batch()
    handles = [kit.apply(cls, module, surfaces) for cls in pair]
    for h in handles:
        kit.randomize(h.parameters)
    trainable = [p for h in handles for p in h.parameters]
    module.train()
    module(batch).cell.pow(2).sum().backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in trainable)
    with torch.no_grad():
        ref = run(module, batch, train=False)
        # removing either adapter's effect changes the output: both are live
        for h in handles:
            saved = [p.detach().clone() for p in h.parameters]
            for p in h.parameters:
                p.zero_()
            assert not torch.allclose(run(module, batch, train=False), ref, atol=1e-4), h.name
            for p, s in zip(h.parameters, saved, strict=False):
                p.copy_(s)


def test_second_lora_or_prefix_is_refused(kit, toy):
    module, surfaces = toy
    kit.apply(LoRA, module, surfaces)
    with pytest.raises(CompatibilityError, match="already carries LoRA"):
        kit.apply(LoRA, module, surfaces)
    kit.apply(PrefixPrompt, module, surfaces)
    with pytest.raises(CompatibilityError, match="already holds prompt tokens"):
        kit.apply(PrefixPrompt, module, surfaces)


# errors at apply time ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [GeneEncoderPrompt, PrefixPrompt, LoRA], ids=lambda c: c.name)
def test_layer_index_beyond_the_backbone(kit, toy, cls):
    module, surfaces = toy
    with pytest.raises(RecipeError, match=r"block\(s\) \[4, 7\].*4 block\(s\) \(indices 0..3\)"):
        kit.apply(cls, module, surfaces, layers=[0, 4, 7])


def test_v2_preset_needs_six_blocks(kit, toy):
    module, surfaces = toy
    with pytest.raises(RecipeError, match=r"\[4, 5\]"):
        kit.apply(LoRA, module, surfaces, preset="v2")


def test_missing_capabilities(kit):
    from sctune.core.surfaces import BlockSurfaces, Surfaces

    module = kit.ToyEncoder(n_blocks=2)
    full = kit.surfaces(module)
    bare = Surfaces(
        hidden_size=16,
        input_embedding=None,
        blocks=tuple(
            BlockSurfaces(
                attention_output=b.attention_output, projections={"q": b.projections["q"]}
            )
            for b in full.blocks
        ),
    )
    with pytest.raises(CompatibilityError, match="input_embedding"):
        GeneTokenPrompt().apply(module, bare, GeneTokenPrompt.config_cls())
    with pytest.raises(CompatibilityError, match="'ffn_parallel'") as info:
        GeneEncoderPrompt().apply(module, bare, GeneEncoderPrompt.config_cls())
    assert "mlp_adapter: false" in (info.value.hint or "")
    handle = GeneEncoderPrompt().apply(
        module, bare, GeneEncoderPrompt.config_cls(mlp_adapter=False)
    )
    assert handle.info["adapters_per_layer"] == 1
    with pytest.raises(CompatibilityError, match="prompt_tokens"):
        PrefixPrompt().apply(module, bare, PrefixPrompt.config_cls())
    with pytest.raises(CompatibilityError, match=r"target 'v' .* available: q"):
        LoRA().apply(module, bare, LoRA.config_cls())
