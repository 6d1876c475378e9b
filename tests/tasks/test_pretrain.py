"""The pretrain task: each backbone's own masked objective, a checkpoint in its real format that
reloads to the same weights and the same held-out masked loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sctune import api, testing
from sctune.backbones.geneformer.objective import GeneformerMaskedTokens
from sctune.backbones.scbert.objective import MASK_TOKEN, ScBERTMaskedBins

BACKBONES = ["scgpt", "geneformer", "scbert"]


def _recipe(registry, backbone, workdir, data, out, *, epochs, options=None):
    rec = testing.example_recipe(
        registry, backbone, "full", workdir, data, task="pretrain", epochs=epochs, out=out
    )
    rec["backbone"].update(options or {})
    rec["task"] = {"name": "pretrain", "probe": False}
    return rec


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pretrain_exports_a_real_checkpoint_that_reloads_to_the_same_loss(
    backbone: str, registry, tiny_h5ad: Path, tmp_path: Path
) -> None:
    first = api.run(
        _recipe(registry, backbone, tmp_path, tiny_h5ad, tmp_path / "pre", epochs=2),
        registry=registry,
        progress=False,
        log=lambda m: None,
    )
    test = first.metrics["test"]
    assert test["masked_tokens"] > 0 and np.isfinite(test["masked_loss"])
    export = test["export"]
    assert export["exported"] and export["reloads_identically"]
    assert export["decoder_tensors"] > 0
    folder = first.run_dir / "pretrained"
    options = yaml.safe_load((folder / "backbone.yaml").read_text())["backbone"]
    assert options.pop("name") == backbone
    options = {
        k: str((folder / v).resolve()) if isinstance(v, str) and (folder / v).exists() else v
        for k, v in options.items()
    }
    # continued: the exported backbone, decoder included, evaluated without training
    base = _recipe(registry, backbone, tmp_path, tiny_h5ad, tmp_path / "again", epochs=0)
    keep = {k: v for k, v in base["backbone"].items() if k in ("name", "pooling", "max_seq_len")}
    base["backbone"] = {**keep, **options}
    base["adapter"] = {"name": "lora"}  # no training: epochs 0; lora leaves weights unchanged
    second = api.run(base, registry=registry, progress=False, log=lambda m: None)
    again = second.metrics["test"]
    assert again["masked_tokens"] == test["masked_tokens"]
    assert again["masked_loss"] == pytest.approx(test["masked_loss"], rel=1e-5, abs=1e-6)
    # which cells made the checkpoint travels with it; the same split tests on held-out cells
    record = json.loads((folder / "pretraining_cells.json").read_text())
    split = json.loads((first.run_dir / "split.json").read_text())
    assert all(record[k] == split[k] for k in ("train", "valid", "test"))
    seen = again["pretraining_cells"]
    assert seen["test_cells_pretrained_on"] == 0 and seen["test_cells"] == len(split["test"])
    assert seen["same_data_file"] == [tiny_h5ad.name]


def test_a_run_testing_on_the_pretraining_cells_is_flagged(
    registry, tiny_h5ad: Path, tmp_path: Path
) -> None:
    """Another seed draws another split: test cells that trained the checkpoint are counted
    and warned about; data.split.file=<pretraining_cells.json> gives back the held-out cells."""
    first = api.run(
        _recipe(registry, "scgpt", tmp_path, tiny_h5ad, tmp_path / "pre", epochs=1),
        registry=registry,
        progress=False,
        log=lambda m: None,
    )
    folder = first.run_dir / "pretrained"
    record = json.loads((folder / "pretraining_cells.json").read_text())
    trained = set(record["train"]) | set(record["valid"])
    options = yaml.safe_load((folder / "backbone.yaml").read_text())["backbone"]
    options = {
        k: str(folder / v) if isinstance(v, str) and (folder / v).exists() else v
        for k, v in options.items()
    }
    rec = testing.example_recipe(
        registry, "scgpt", "lora", tmp_path, tiny_h5ad, epochs=0, out=tmp_path / "other"
    )
    rec["backbone"] = options
    rec["seed"] = 7
    lines: list[str] = []
    run = api.run(rec, registry=registry, progress=False, log=lines.append)
    test_ids = json.loads((run.run_dir / "split.json").read_text())["test"]
    want = sum(c in trained for c in test_ids)
    assert want > 0  # another seed, another split
    assert run.metrics["test"]["pretraining_cells"]["test_cells_pretrained_on"] == want
    assert any("transductive" in line and f"{want} of the" in line for line in lines)
    rec["data"]["split"] = {"file": str(folder / "pretraining_cells.json")}
    rec["output"] = {**rec.get("output", {}), "dir": str(tmp_path / "held_out")}
    held = api.run(rec, registry=registry, progress=False, log=lambda m: None)
    assert held.metrics["test"]["pretraining_cells"]["test_cells_pretrained_on"] == 0
    assert json.loads((held.run_dir / "split.json").read_text())["test"] == record["test"]


def test_geneformer_masks_like_bert_and_never_specials() -> None:
    from transformers import BertConfig

    cfg = BertConfig(vocab_size=60, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    obj = GeneformerMaskedTokens(cfg, pad_id=0, mask_id=1, special_ids=(2, 3), first_gene_id=4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 60, (400, 50), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # <cls> ... <eos>
    ids[::2, 40:] = 0  # padding
    batch = {"input_ids": ids, "padding_mask": ids == 0}
    masked = obj.mask(batch, 0.15, torch.Generator().manual_seed(1))
    pos = masked.positions
    assert not (pos & ((ids == 0) | (ids == 2) | (ids == 3))).any()
    new = masked.batch["input_ids"]
    assert torch.equal(new[~pos], ids[~pos]) and torch.equal(masked.target, ids)
    share_mask = (new[pos] == 1).float().mean().item()
    share_same = (new[pos] == ids[pos]).float().mean().item()
    assert 0.77 < share_mask < 0.83 and 0.07 < share_same < 0.13  # BERT's 80/10/10
    assert (new[pos] >= 1).all() and not ((new[pos] == 2) | (new[pos] == 3)).any()


def test_scbert_masks_only_expressed_bins() -> None:
    obj = ScBERTMaskedBins(8, n_genes=30)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6, (50, 31), generator=g)
    masked = obj.mask({"tokens": tokens}, 0.15, torch.Generator().manual_seed(2))
    pos = masked.positions
    assert pos.any() and (tokens[pos] > 0).all() and not pos[:, 30].any()
    assert (masked.batch["tokens"][pos] == MASK_TOKEN).all()
    logits = torch.zeros(50, 31, 7)
    logits[..., 3] = 1.0
    loss, count, correct = obj.per_cell(logits, masked)
    assert torch.equal(count, pos.sum(1).float())
    assert torch.equal(correct, (pos & (tokens == 3)).sum(1).float())


def test_scbert_mask_unexpressed_also_masks_zero_bins_at_that_rate() -> None:
    """``mask_unexpressed``: the expressed genes are masked as before (same draw), plus that
    fraction of each cell's zero-bin genes; padding and the last (non-gene) position never."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6, (200, 41), generator=g)
    tokens[:, :20] = 0  # half of the genes unexpressed in every cell
    pad = torch.zeros_like(tokens, dtype=torch.bool)
    pad[::2, 35:40] = True
    batch = {"tokens": tokens, "padding_mask": pad}
    plain = ScBERTMaskedBins(8, n_genes=40).mask(batch, 0.15, torch.Generator().manual_seed(3))
    obj = ScBERTMaskedBins(8, n_genes=40, mask_unexpressed=0.25)
    masked = obj.mask(batch, 0.15, torch.Generator().manual_seed(3))
    pos = masked.positions
    assert torch.equal(pos & (tokens > 0), plain.positions)  # the expressed draw is unchanged
    zero = tokens == 0
    zero[:, 40:] = False
    zero &= ~pad
    assert not (pos & (pad | (torch.arange(41) == 40))).any()
    share = (pos & zero).sum(1).float() / zero.sum(1).float()
    want = (zero.sum(1).float() * 0.25).round() / zero.sum(1).float()
    assert torch.allclose(share, want)
    assert (masked.batch["tokens"][pos] == MASK_TOKEN).all()
    assert (masked.target[pos & zero] == 0).all()


def test_the_exported_embedding_is_of_clean_cells_and_eval_masks_are_fixed() -> None:
    """Training encodes masked cells only; evaluation returns the clean cells' embedding and
    scores a copy masked with a fixed seed, so two evaluations agree exactly."""
    import tempfile

    from sctune.core.assembly import CellModel
    from sctune.tasks.pretrain.head import MaskedModellingHead

    expr = testing.tiny_expression(12)
    toy = testing.ToyBackbone()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = toy.config_cls(**toy.example_config(Path(tmp), list(expr.genes)))
        module = toy.build(cfg)
        cells = toy.tokenize(expr, cfg, seed=0)
    batch = cells.collate([cells[i] for i in range(len(cells))])
    head = MaskedModellingHead(int(module.hidden_size), mask_ratio=0.3)
    head.attach(toy.masked_modelling(module, cfg))
    model = CellModel(module, head).eval()
    with torch.no_grad():
        cell, out = model(batch)
        cell2, out2 = model(batch)
        clean = module(batch).cell
    torch.testing.assert_close(cell, clean, rtol=0, atol=0)
    torch.testing.assert_close(out, out2, rtol=0, atol=0, equal_nan=True)
    assert float(out[:, 1].sum()) > 0
    model.train()
    _, trained = model(batch)
    assert float(trained[:, 1].sum()) > 0  # training masks too (fresh masks each step)


def test_gepc_trains_the_cell_embedding_and_predict_reproduces_it(
    registry, tiny_h5ad: Path, tmp_path: Path
) -> None:
    """With ``gepc`` the head reconstructs HVG expression from the cell embedding: the run reports
    ``gepc_mse``, the cell embedding moves with training, and predict reproduces the run's
    outputs."""
    import anndata as ad

    def run(gepc: bool, epochs: int, name: str) -> api.RunResult:
        rec = _recipe(registry, "scgpt", tmp_path, tiny_h5ad, tmp_path / name, epochs=epochs)
        rec["task"] = {"name": "pretrain", "probe": False, "gepc": gepc, "n_hvg": 20}
        rec["adapter"] = {"name": "lora"}
        return api.run(rec, registry=registry, progress=False, log=lambda m: None)

    before = ad.read_h5ad(run(True, 0, "zero").run_dir / "predictions.h5ad").obsm["X_sctune"]
    result = run(True, 2, "gepc")
    test = result.metrics["test"]
    assert np.isfinite(test["gepc_mse"]) and test["masked_tokens"] > 0
    logged = (result.run_dir / "train_log.jsonl").read_text()
    assert "valid/gepc_mse" in logged or "gepc_mse" in logged
    own = result.run_dir / "predictions.h5ad"
    after = ad.read_h5ad(own).obsm["X_sctune"]
    assert not np.allclose(after, before, atol=1e-6)  # lora on the blocks trained through <cls>
    again = api.predict(result.run_dir, own, tmp_path / "p.h5ad")
    np.testing.assert_allclose(ad.read_h5ad(again).obsm["X_sctune"], after, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        ad.read_h5ad(again).obs["sctune_masked_loss"],
        ad.read_h5ad(own).obs["sctune_masked_loss"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_embedding_spread_flags_a_collapsed_embedding() -> None:
    """0 for identical cells, tiny for cells that differ by noise of 1e-5 around one direction,
    and a warning in the run summary below the threshold; healthy random embeddings pass."""
    from sctune.tasks.pretrain.plugin import COLLAPSED, PretrainTask, embedding_spread

    rng = np.random.default_rng(0)
    one = rng.normal(size=32)
    assert embedding_spread(np.tile(one, (50, 1))) == pytest.approx(0.0, abs=1e-12)
    collapsed = one + 1e-5 * rng.normal(size=(50, 32))
    healthy = one + 0.5 * rng.normal(size=(50, 32))
    assert embedding_spread(collapsed) < COLLAPSED < embedding_spread(healthy)
    task = PretrainTask()
    assert "COLLAPSED" in task.summary({"embedding_spread": embedding_spread(collapsed)})
    assert "COLLAPSED" not in task.summary({"embedding_spread": embedding_spread(healthy)})


def test_embedding_spread_cannot_be_fooled_by_nan_or_too_few_cells() -> None:
    from sctune.tasks.pretrain.plugin import PretrainTask, embedding_spread

    rng = np.random.default_rng(1)
    healthy = rng.normal(size=(40, 16)) + 3.0
    broken = healthy.copy()
    broken[0, 0] = np.nan
    assert embedding_spread(broken) == pytest.approx(embedding_spread(healthy[1:]))
    assert np.isnan(embedding_spread(healthy[:1]))
    assert np.isnan(embedding_spread(np.zeros((5, 4))))
    assert embedding_spread(np.array([[1.0, 0.0], [-1.0, 0.0]])) == 1.0  # mean zero
    assert "COLLAPSED" not in PretrainTask().summary({"embedding_spread": float("nan")})


def test_the_overlap_is_compared_only_on_the_same_cells(tmp_path: Path) -> None:
    """A record is compared with a run that holds most of its cells (whatever the file is
    called), or some of them from a file of the same name; otherwise ``None``, not 0."""
    from sctune.core import provenance

    folder = tmp_path / "ckpt"
    folder.mkdir()
    cells = [f"c{i}" for i in range(100)]
    split = {"dataset": "/a/cells.h5ad", "train": cells[:70], "valid": cells[70:80]}
    split["test"] = cells[80:]
    (tmp_path / "split.json").write_text(json.dumps(split))
    provenance.write(folder, tmp_path / "split.json")
    test = np.arange(60, 100)  # 10 train + 10 valid + 20 held-out cells
    opts = {"checkpoint": str(folder), "vocab": str(folder)}
    same = provenance.overlap(opts, "/b/renamed.h5ad", cells, test)
    assert same is not None and same["test_cells_pretrained_on"] == 20
    other = [f"x{i}" for i in range(95)] + cells[:5]  # another experiment, 5 shared barcodes
    assert (
        provenance.overlap(opts, "/b/other.h5ad", other, test)["test_cells_pretrained_on"] is None
    )
    named = provenance.overlap(opts, "/c/cells.h5ad", other, np.arange(100))
    assert named["test_cells_pretrained_on"] == 5 and named["same_data_file"] == ["cells.h5ad"]
    assert provenance.overlap({"vocab": str(folder)}, "/a/cells.h5ad", cells, test) is None
    (folder / provenance.PRETRAINING_CELLS).write_text("[1, 2]")
    assert provenance.overlap(opts, "/a/cells.h5ad", cells, test) is None
