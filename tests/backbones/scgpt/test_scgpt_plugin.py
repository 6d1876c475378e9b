"""scGPT plugin: example_config, check, fingerprint, registration, no torch at import."""

from __future__ import annotations

import subprocess
import sys

import torch

from sctune.backbones.scgpt import plugin
from sctune.backbones.scgpt.config import ScGPTConfig
from sctune.backbones.scgpt.plugin import ScGPTBackbone


def test_example_config_builds_from_real_format(h, tmp_path):
    options = ScGPTBackbone.example_config(tmp_path, h.GENES)
    cfg = ScGPTConfig(**options)
    backbone = ScGPTBackbone()
    assert backbone.check(cfg) == []
    model = backbone.build(cfg)
    report = model.load_report
    assert report.layouts == {"flash"}
    assert {k.split(".")[0] for k in report.ignored} == {"decoder", "mvc_decoder"}
    cells = backbone.tokenize(h.make_expression(), cfg, seed=0)
    batch = cells.collate([cells[i] for i in range(5)])
    out = model(batch)
    assert out.cell.shape == (5, model.hidden_size) == (5, 32)
    assert torch.isfinite(out.tokens).all()
    fp = backbone.fingerprint(cfg)
    assert set(fp) == {"best_model.pt", "vocab.json"} and all(len(v) == 64 for v in fp.values())
    # identical example checkpoints (seeded) give identical hashes
    again = ScGPTBackbone.example_config(tmp_path / "again", h.GENES)
    assert backbone.fingerprint(ScGPTConfig(**again))["best_model.pt"] == fp["best_model.pt"]


def test_check_reports_missing_files(tmp_path):
    backbone = ScGPTBackbone()
    problems = backbone.check(ScGPTConfig(checkpoint=tmp_path / "nope"))
    assert problems == [
        ("backbone.checkpoint", f"checkpoint folder '{tmp_path / 'nope'}' not found")
    ]
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "args.json").write_text("{}")
    [(key, msg)] = backbone.check(ScGPTConfig(checkpoint=tmp_path / "ck"))
    assert key == "backbone.checkpoint" and "'vocab.json', 'best_model.pt'" in msg
    [(key, _)] = backbone.check(ScGPTConfig(vocab=tmp_path / "v.json"))
    assert key == "backbone.vocab"


def test_config_validation_messages(tmp_path):
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="divisible by 'nheads'"):
        ScGPTConfig(embsize=30, nheads=4)
    with pytest.raises(pydantic.ValidationError, match="either 'checkpoint' or 'vocab'"):
        ScGPTConfig(checkpoint=tmp_path, vocab=tmp_path / "v.json")
    with pytest.raises(pydantic.ValidationError):
        ScGPTConfig(dropuot=0.1)


def test_registration_and_cheap_import():
    assert plugin.sctune_register_backbones() == [ScGPTBackbone]
    code = "import sys, sctune.backbones.scgpt.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reference_parameter_count_whole_human(tmp_path):
    """Encoder 50,278,400 + ExprDecoder 525,825 (methods.md section 10)."""
    import json

    from sctune.backbones.scgpt.plugin import ScGPTBackbone

    vocab = {f"G{i}": i for i in range(60_694)}
    vocab.update({"<pad>": 60_694, "<cls>": 60_695, "<eoc>": 60_696})
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(vocab))
    backbone = ScGPTBackbone()
    cfg = backbone.config_cls(vocab=path)
    assert backbone.reference_parameter_count(cfg) == 50_278_400 + 525_825
