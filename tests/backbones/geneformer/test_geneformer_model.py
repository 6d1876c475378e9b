"""Geneformer module: equivalence with transformers, key accounting, slots, prompts, counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from sctune.backbones.geneformer.weights import count_parameters, read_bert_config
from sctune.core.capabilities import INSERTION_POINTS
from sctune.core.errors import CheckpointError


def _batch(vocab: int, lengths=(12, 7, 3), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.ones(len(lengths), width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(2, vocab, (n,), generator=g)
        mask[i, :n] = False
    return {"input_ids": ids, "padding_mask": mask}


def _reference(folder: str) -> nn.Module:
    from transformers import BertForMaskedLM

    ref = BertForMaskedLM.from_pretrained(folder, attn_implementation="sdpa")
    return ref.eval()


def _bin_variant(folder: str, tmp_path: Path) -> str:
    """The same weights as pytorch_model.bin (full state_dict incl. MLM head) plus a
    training_args.bin that must never be read."""
    from transformers import BertForMaskedLM

    out = tmp_path / "bin_ckpt"
    out.mkdir()
    shutil.copy(Path(folder) / "config.json", out / "config.json")
    model = BertForMaskedLM.from_pretrained(folder)
    state = dict(model.state_dict())
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]  # old checkpoints have it
    torch.save(state, out / "pytorch_model.bin")
    (out / "training_args.bin").write_bytes(b"not a pickle; loading it would fail")
    return str(out)


@pytest.mark.parametrize("variant", ["safetensors", "bin"])
def test_matches_transformers_bert(tiny_v1, backbone, make_config, tmp_path, variant):
    folder = (
        tiny_v1["checkpoint"]
        if variant == "safetensors"
        else _bin_variant(tiny_v1["checkpoint"], tmp_path)
    )
    module = backbone.build(make_config(tiny_v1, checkpoint=folder)).eval()
    ref = _reference(tiny_v1["checkpoint"])
    batch = _batch(ref.config.vocab_size)
    with torch.no_grad():
        out = module(batch)
        hf = ref(
            input_ids=batch["input_ids"],
            attention_mask=(~batch["padding_mask"]).long(),
            output_hidden_states=True,
        ).hidden_states[-1]
    assert out.tokens.shape == hf.shape
    torch.testing.assert_close(out.tokens, hf, atol=1e-5, rtol=1e-5)
    keep = (~batch["padding_mask"]).float().unsqueeze(-1)
    mean = (hf * keep).sum(1) / keep.sum(1)
    torch.testing.assert_close(out.cell, mean, atol=1e-5, rtol=1e-5)
    assert module.load_report["loaded"] == len(module.bert.state_dict())
    assert any(k.startswith("cls.predictions.") for k in module.load_report["ignored"])
    if variant == "bin":
        assert "bert.embeddings.position_ids" in module.load_report["ignored"]


def test_pooling_variants(tiny_v1, tiny_v2, backbone, make_config):
    cls = backbone.build(make_config(tiny_v1, pooling="cls")).eval()
    pooler = backbone.build(make_config(tiny_v1, pooling="pooler")).eval()
    batch = _batch(len(json.loads(Path(tiny_v1["token_dictionary"]).read_text())))
    with torch.no_grad():
        a, b = cls(batch), pooler(batch)
    torch.testing.assert_close(a.cell, a.tokens[:, 0])
    torch.testing.assert_close(b.cell, torch.tanh(pooler.bert.pooler.dense(b.tokens[:, 0])))
    assert cls.fresh_modules == () and pooler.fresh_modules == ("bert.pooler",)
    assert pooler.load_report["fresh"] == ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
    assert isinstance(pooler.get_submodule("bert.pooler"), nn.Module)
    # V2 mean pooling skips <cls> and <eos>
    v2 = backbone.build(make_config(tiny_v2)).eval()
    tokens = json.loads(Path(tiny_v2["token_dictionary"]).read_text())
    ids = torch.tensor([[tokens["<cls>"], 5, 6, 7, tokens["<eos>"]]])
    with torch.no_grad():
        out = v2({"input_ids": ids, "padding_mask": torch.zeros_like(ids, dtype=torch.bool)})
    torch.testing.assert_close(out.cell, out.tokens[:, 1:4].mean(1))


def _rewrite(folder: str, tmp_path: Path, edit) -> str:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "edited"
    shutil.copytree(folder, out)
    state = load_file(str(out / "model.safetensors"))
    edit(state)
    save_file(state, str(out / "model.safetensors"))
    return str(out)


def test_strict_key_accounting(tiny_v1, backbone, make_config, tmp_path):
    def drop(state):
        del state["bert.encoder.layer.1.output.dense.weight"]
        state["bert.encoder.layer.0.attention.self.extra"] = torch.zeros(3)
        state["bert.embeddings.LayerNorm.weight"] = torch.ones(31)

    folder = _rewrite(tiny_v1["checkpoint"], tmp_path, drop)
    with pytest.raises(CheckpointError) as err:
        backbone.build(make_config(tiny_v1, checkpoint=folder))
    text = err.value.message
    assert "1 missing, 1 unexpected, 1 shape" in text
    assert "missing: bert.encoder.layer.1.output.dense.weight" in text
    assert "unexpected: bert.encoder.layer.0.attention.self.extra" in text
    assert "bert.embeddings.LayerNorm.weight is [31] in the file, [32] in the model" in text


def test_missing_weight_file_and_vocab_mismatch(tiny_v1, backbone, make_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(Path(tiny_v1["checkpoint"]) / "config.json", empty / "config.json")
    with pytest.raises(CheckpointError, match="has no weight file"):
        backbone.build(make_config(tiny_v1, checkpoint=str(empty)))
    big = tmp_path / "big_vocab.json"
    big.write_text(json.dumps({"<pad>": 0, "<mask>": 1, "ENSG00000000001": 500}))
    with pytest.raises(CheckpointError, match="ids up to 500"):
        backbone.build(make_config(tiny_v1, token_dictionary=str(big)))


def test_eval_equals_train_without_dropout(tiny_v1, backbone, make_config):
    module = backbone.build(make_config(tiny_v1, attention_dropout=0.0, hidden_dropout=0.0))
    batch = _batch(module.bert.config.vocab_size)
    module.train()
    train = module(batch).cell
    module.eval()
    with torch.no_grad():
        evaluation = module(batch).cell
    torch.testing.assert_close(train.detach(), evaluation)


def test_sdpa_path_is_used(tiny_v1, backbone, make_config, monkeypatch):
    module = backbone.build(make_config(tiny_v1)).eval()
    assert module.bert.config._attn_implementation == "sdpa"
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        module(_batch(module.bert.config.vocab_size))
    assert len(calls) == module.bert.config.num_hidden_layers
    assert calls[0].dtype == torch.bool and calls[0].shape == (3, 1, 1, 12)


def test_prompts_inserted_then_stripped(tiny_v1, backbone, make_config):
    module = backbone.build(make_config(tiny_v1)).eval()
    surfaces = backbone.surfaces(module)
    assert surfaces.provides() == INSERTION_POINTS
    batch = _batch(module.bert.config.vocab_size)
    with torch.no_grad():
        base = module(batch)
    seen = []
    module.bert.encoder.layer[1].attention.register_forward_pre_hook(
        lambda mod, args: seen.append((args[0].shape[1], args[1]))
    )
    for i, block in enumerate(surfaces.blocks):
        block.prompt.set(nn.Parameter(torch.randn(4, 32) * (i + 1)))
    with torch.no_grad():
        out = module(batch)
    assert out.tokens.shape == base.tokens.shape
    assert torch.equal(out.padding_mask, batch["padding_mask"])
    assert not torch.allclose(out.cell, base.cell)
    length, mask = seen[0]
    assert length == 12 + 4
    assert mask[:, 0, 0, 1:5].all()  # prompt positions attend (after position 0)
    assert not mask[2, 0, 0, 5 + 3 :].any()  # cell 2's padding stays masked


def test_slots_and_projections_run(tiny_v1, backbone, make_config):
    module = backbone.build(make_config(tiny_v1)).eval()
    surfaces = backbone.surfaces(module)
    batch = _batch(module.bert.config.vocab_size)
    with torch.no_grad():
        base = module(batch).cell
    hits = []

    class Tap(nn.Module):
        def __init__(self, name, inner=None):
            super().__init__()
            self.name, self.inner = name, inner

        def forward(self, x):
            hits.append(self.name)
            return self.inner(x) if self.inner is not None else x

    surfaces.input_embedding.adapters.append(Tap("input"))
    block = surfaces.blocks[0]
    block.attention_output.adapters.append(Tap("attention"))
    block.ffn_parallel.branches.append(nn.Sequential(Tap("parallel"), nn.Linear(32, 32)))
    for name, site in block.projections.items():
        assert isinstance(site.module, nn.Linear)
        setattr(site.owner, site.attr, Tap(name, site.module))
    with torch.no_grad():
        out = module(batch).cell
    assert hits[:2] == ["input", "q"] and {
        "k",
        "v",
        "o",
        "attention",
        "ffn_in",
        "ffn_out",
        "parallel",
    } <= set(hits)
    assert not torch.allclose(out, base)  # the parallel branch adds to the output


def test_parameter_count_v1_10m(shared_data, backbone, make_config):
    path = shared_data / "geneformer_configs" / "v1_6L_10M_config.json"
    config = read_bert_config(path)
    assert count_parameters(config, mlm_head=True) == 10_288_722
    assert count_parameters(config, mlm_head=False) < 10_288_722
    assert backbone.parameter_count(make_config({}, model_config=str(path))) == 10_288_722


def test_meta_build_and_random_init_shapes(shared_data, backbone, make_config):
    cfg = make_config(
        {}, model_config=str(shared_data / "geneformer_configs" / "v1_6L_10M_config.json")
    )
    with torch.device("meta"):
        module = backbone.build(cfg, load_weights=False)
    assert module.hidden_size == 256 and len(module.bert.encoder.layer) == 6
    assert module.load_report["deviations"]["attention_dropout"] == {
        "pretraining": 0.02,
        "used": 0.0,
    }
    tiny = backbone.build(
        make_config(
            {},
            hidden_size=16,
            num_layers=1,
            num_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
    )
    assert tiny.hidden_size == 16 and tiny.bert.config.hidden_act == "relu"
