"""The adapters on sctune's scGPT backbone: exactness at tiny size, counts at whole-human size."""

from __future__ import annotations

import json

import pytest
import torch

from sctune.adapters.gene_encoder_prompt.plugin import GeneEncoderPrompt
from sctune.adapters.gene_token_prompt.plugin import GeneTokenPrompt
from sctune.adapters.lora.plugin import LoRA
from sctune.adapters.prefix_prompt.plugin import PrefixPrompt

scgpt_plugin = pytest.importorskip("sctune.backbones.scgpt.plugin")
ScGPTBackbone = scgpt_plugin.ScGPTBackbone
ScGPTConfig = ScGPTBackbone.config_cls

ALL = [GeneTokenPrompt, GeneEncoderPrompt, PrefixPrompt, LoRA]
HEAD_18 = 536_594  # H(18) = 527,360 + 513 * 18 (methods.md section 10)


def _vocab(tmp_path, n_genes: int):
    path = tmp_path / "vocab.json"
    vocab = {f"G{i}": i for i in range(n_genes)}
    vocab.update({"<pad>": n_genes, "<cls>": n_genes + 1, "<eoc>": n_genes + 2})
    path.write_text(json.dumps(vocab))
    return path, vocab


@pytest.fixture
def tiny(tmp_path):
    path, vocab = _vocab(tmp_path, 40)
    config = ScGPTConfig(vocab=path, embsize=32, nheads=4, d_hid=64, nlayers=4, dropout=0.0)
    backbone = ScGPTBackbone()

    def build():
        torch.manual_seed(0)
        module = backbone.build(config, load_weights=False)
        return module, backbone.surfaces(module)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (3, 9), generator=g)
    ids[:, 0] = vocab["<cls>"]
    values = torch.randint(1, 51, (3, 9), generator=g).float()
    values[:, 0] = 0.0
    mask = torch.arange(9)[None, :] >= torch.tensor([9, 6, 4])[:, None]
    ids[mask], values[mask] = vocab["<pad>"], -2.0
    return build, {"gene_ids": ids, "values": values, "padding_mask": mask}


def _cell(module, batch, *, train):
    module.train(train)
    return module(batch).cell


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_eval_equals_train_and_adapters_run(kit, tiny, cls):
    build, batch = tiny
    module, surfaces = build()
    with torch.no_grad():
        base = _cell(module, batch, train=False)
    handle = kit.apply(cls, module, surfaces)
    kit.randomize(p for p in handle.parameters if p.dim() == 2)
    train_out = _cell(module, batch, train=True)
    with torch.no_grad():
        eval_out = _cell(module, batch, train=False)
    assert not torch.allclose(eval_out, base, atol=1e-3)
    torch.testing.assert_close(eval_out, train_out.detach(), rtol=0, atol=1e-5)
    out = module(batch)
    assert out.tokens.shape[:2] == batch["gene_ids"].shape
    assert torch.equal(out.padding_mask, batch["padding_mask"])
    if handle.merge is not None:
        with torch.no_grad():
            handle.merge()
            torch.testing.assert_close(_cell(module, batch, train=False), eval_out)
            handle.unmerge()
            torch.testing.assert_close(_cell(module, batch, train=False), eval_out)


@pytest.mark.parametrize(
    ("cls", "options"),
    [(GeneTokenPrompt, {"zero_init": True}), (GeneEncoderPrompt, {"zero_init": True}), (LoRA, {})],
    ids=["token", "encoder", "lora"],
)
def test_zero_init_reproduces_scgpt(kit, tiny, cls, options):
    build, batch = tiny
    module, surfaces = build()
    with torch.no_grad():
        base = _cell(module, batch, train=False)
        kit.apply(cls, module, surfaces, **options)
        assert torch.equal(_cell(module, batch, train=False), base)


def test_zero_prompts_change_scgpt(kit, tiny):
    build, batch = tiny
    module, surfaces = build()
    with torch.no_grad():
        base = _cell(module, batch, train=False)
        kit.apply(PrefixPrompt, module, surfaces, layers=[1, 2])
        assert not torch.allclose(_cell(module, batch, train=False), base, atol=1e-4)


def test_gradients_reach_exactly_the_handle(kit, tiny):
    build, batch = tiny
    module, surfaces = build()
    handles = [kit.apply(c, module, surfaces) for c in ALL]
    trained = [p for h in handles for p in h.parameters]
    opt = torch.optim.SGD(trained, lr=0.5)
    for step in range(2):
        opt.zero_grad()
        _cell(module, batch, train=True).pow(2).sum().backward()
        if step == 0:
            opt.step()
    ids = {id(p) for p in trained}
    for name, p in module.named_parameters():
        if id(p) in ids:
            assert p.grad is not None, name
            assert torch.count_nonzero(p.grad) > 0, name
        else:
            assert p.grad is None, name


# (e) counts at whole-human size on the meta device ----------------------------------------------


@pytest.fixture(scope="module")
def whole_human(tmp_path_factory):
    path, _ = _vocab(tmp_path_factory.mktemp("vocab"), 60_694)  # + 3 specials = 60,697
    config = ScGPTConfig(vocab=path, embsize=512, nheads=8, d_hid=512, nlayers=12)
    backbone = ScGPTBackbone()

    def build():
        with torch.device("meta"):
            module = backbone.build(config, load_weights=False)
        return module, backbone.surfaces(module)

    return build


def _count(build, cls, **options):
    module, surfaces = build()
    handle = cls().apply(module, surfaces, cls.config_cls(**options))
    assert all(p.is_meta for p in handle.parameters)
    return sum(p.numel() for p in handle.parameters), handle


def test_backbone_size_matches_methods_md(whole_human):
    module, _ = whole_human()
    # methods.md 10: embedding+norm 31,077,888; value encoder 264,704; 12 layers 18,935,808
    assert sum(p.numel() for p in module.parameters()) == 31_077_888 + 264_704 + 18_935_808


def test_v1_counts_at_whole_human(whole_human):
    assert _count(whole_human, GeneTokenPrompt)[0] == 131_712
    assert _count(whole_human, GeneEncoderPrompt)[0] == 1_580_544
    assert _count(whole_human, PrefixPrompt)[0] == 393_216
    total, handle = _count(whole_human, LoRA)
    assert (total, handle.info["n_low_rank"]) == (215_040, 196_608)
    assert total - handle.info["n_low_rank"] == 18_432  # 12 packed QKV biases (1,536 each)
    assert _count(whole_human, LoRA, train_bias=False)[0] == 196_608


def test_v2_counts_at_whole_human(whole_human):
    # methods.md 10, v2 defaults at n = 18 minus the head H(18)
    assert _count(whole_human, GeneEncoderPrompt, preset="v2")[0] == 1_326_866 - HEAD_18
    assert _count(whole_human, GeneTokenPrompt, preset="v2")[0] == 1_061_906 - HEAD_18
    assert _count(whole_human, PrefixPrompt, preset="v2")[0] == 561_170 - HEAD_18
    assert _count(whole_human, LoRA, preset="v2")[0] == 644_114 - HEAD_18
    # HYBRID = ENCODER + TOKEN
    module, surfaces = whole_human()
    hybrid = [
        cls().apply(module, surfaces, cls.config_cls(preset="v2"))
        for cls in (GeneEncoderPrompt, GeneTokenPrompt)
    ]
    assert sum(p.numel() for h in hybrid for p in h.parameters) == 1_852_178 - HEAD_18
