"""Less wasted work: length-bucketed batches and the on-disk token cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sctune import api, testing
from sctune.core import tokencache
from sctune.core.cells import TokenizedCells
from sctune.core.trainer import LengthBucketSampler, _loader

REGISTRY = api.get_registry()


def _lengths(n: int = 600, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(5, 500, n)


def _padding(batches: list[list[int]], lengths: np.ndarray) -> float:
    slots = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - sum(lengths[b].sum() for b in batches) / slots


def test_buckets_cover_every_cell_once_with_less_padding() -> None:
    lengths = _lengths()
    gen = torch.Generator().manual_seed(0)
    sampler = LengthBucketSampler(lengths, 16, gen, pool_batches=8)
    epoch1, epoch2 = list(sampler), list(sampler)
    for epoch in (epoch1, epoch2):
        assert sorted(i for b in epoch for i in b) == list(range(len(lengths)))
        assert len(epoch) == len(sampler) == int(np.ceil(len(lengths) / 16))
    assert epoch1 != epoch2  # a new random draw every epoch
    plain = list(torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)))
    shuffled = [[int(i) for i in plain[k : k + 16]] for k in range(0, len(plain), 16)]
    assert _padding(epoch1, lengths) < 0.5 * _padding(shuffled, lengths)


def test_buckets_resume_exactly_from_the_generator_state() -> None:
    lengths = _lengths()
    gen = torch.Generator().manual_seed(3)
    sampler = LengthBucketSampler(lengths, 10, gen)
    list(sampler)
    saved = gen.get_state()
    want = list(sampler)
    gen2 = torch.Generator()
    gen2.set_state(saved)
    assert list(LengthBucketSampler(lengths, 10, gen2)) == want


def test_weighted_buckets_draw_n_cells_by_weight() -> None:
    lengths = _lengths(400)
    weights = np.where(np.arange(400) < 200, 1.0, 0.0)
    sampler = LengthBucketSampler(lengths, 16, torch.Generator().manual_seed(0), weights=weights)
    drawn = [i for b in sampler for i in b]
    assert len(drawn) == 400 and max(drawn) < 200


def _cells(lengths: np.ndarray) -> TokenizedCells:
    rng = np.random.default_rng(0)
    return TokenizedCells(
        fields={
            "gene_ids": [rng.integers(0, 50, n) for n in lengths],
            "values": [rng.random(n).astype(np.float32) for n in lengths],
        },
        pad_values={"gene_ids": 0, "values": -2.0},
        dtypes={"gene_ids": torch.long, "values": torch.float32},
    )


def test_loader_with_lengths_pads_each_batch_to_its_longest_cell() -> None:
    lengths = _lengths(200)
    cells = _cells(lengths)
    dl = _loader(
        cells, 8, cells.collate, shuffle=True, generator=torch.Generator().manual_seed(0),
        lengths=cells.lengths(),
    )  # fmt: skip
    seen, pad, slots = 0, 0, 0
    for batch in dl:
        seen += batch["gene_ids"].shape[0]
        pad += int(batch["padding_mask"].sum())
        slots += batch["padding_mask"].numel()
    assert seen == 200
    assert pad / slots < 0.1  # about 50% with plain shuffling of these lengths


# --------------------------------------------------------------------------- token cache


@pytest.fixture
def scgpt_inputs(tmp_path: Path):
    from sctune.core.data import load_data
    from sctune.core.recipe import DataConfig

    h5ad = testing.write_tiny_h5ad(tmp_path / "cells.h5ad", 60, n_genes=120)
    expr = load_data(DataConfig(path=str(h5ad)), seed=0).expression
    backbone = REGISTRY.instance("backbone", "scgpt")
    vocab = {g: i for i, g in enumerate(expr.genes)}
    for tok in ("<pad>", "<cls>", "<eoc>"):
        vocab[tok] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    cfg = backbone.config_cls.model_validate(
        {"vocab": str(tmp_path / "vocab.json"), "embsize": 16, "nheads": 2, "d_hid": 16,
         "nlayers": 1, "max_seq_len": 40}
    )  # fmt: skip
    return backbone, cfg, expr


def _equal(a: TokenizedCells, b: TokenizedCells) -> None:
    assert list(a.fields) == list(b.fields) and len(a) == len(b)
    for key in a.fields:
        for x, y in zip(a.fields[key], b.fields[key], strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            assert np.asarray(x).dtype == np.asarray(y).dtype
    assert a.pad_values == b.pad_values and a.dtypes == b.dtypes
    assert a.gene_match == b.gene_match and a.meta == b.meta


def test_cached_tokens_equal_fresh_ones_and_are_not_recomputed(
    scgpt_inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone, cfg, expr = scgpt_inputs
    fresh = backbone.tokenize(expr, cfg, seed=0)
    first = tokencache.tokenize_cached(backbone, expr, cfg, seed=0, cache_dir=tmp_path / "c")
    _equal(first, fresh)
    calls = []
    original = type(backbone).tokenize
    monkeypatch.setattr(
        type(backbone), "tokenize", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    lines: list[str] = []
    again = tokencache.tokenize_cached(
        backbone, expr, cfg, seed=0, cache_dir=tmp_path / "c", log=lines.append
    )
    assert calls == [] and "read from the cache" in lines[0]
    assert isinstance(again.fields["gene_ids"], tokencache.Ragged)
    _equal(again, fresh)
    batch = again.collate([again[i] for i in range(5)])
    want = fresh.collate([fresh[i] for i in range(5)])
    for k in want:
        assert torch.equal(batch[k], want[k])
    # another seed, another setting or other data: a new key, tokenized afresh
    tokencache.tokenize_cached(backbone, expr, cfg, seed=1, cache_dir=tmp_path / "c")
    other = cfg.model_copy(update={"max_seq_len": 20})
    tokencache.tokenize_cached(backbone, expr, other, seed=0, cache_dir=tmp_path / "c")
    from dataclasses import replace

    X = expr.X.copy()
    X.data[0] += 1
    tokencache.tokenize_cached(backbone, replace(expr, X=X), cfg, seed=0, cache_dir=tmp_path / "c")
    assert calls == [1, 1, 1]
    assert len(list((tmp_path / "c" / "tokens").iterdir())) == 4


def test_vocabulary_content_not_its_path_keys_the_cache(scgpt_inputs, tmp_path: Path) -> None:
    backbone, cfg, expr = scgpt_inputs
    copy = tmp_path / "elsewhere.json"
    copy.write_text(Path(cfg.vocab).read_text())
    moved = cfg.model_copy(update={"vocab": str(copy)})
    assert tokencache.cache_key(backbone, cfg, expr, seed=0) == tokencache.cache_key(
        backbone, moved, expr, seed=0
    )
    vocab = json.loads(copy.read_text())
    vocab["EXTRA"] = max(vocab.values()) + 1
    copy.write_text(json.dumps(vocab))
    assert tokencache.cache_key(backbone, cfg, expr, seed=0) != tokencache.cache_key(
        backbone, moved, expr, seed=0
    )


def test_run_logs_padding_and_reuses_tokens(tiny_h5ad: Path, tmp_path: Path) -> None:
    rec = testing.example_recipe(REGISTRY, "scgpt", "lora", tmp_path, tiny_h5ad, epochs=1)
    rec["data"]["cache_dir"] = str(tmp_path / "cache")
    rec["output"]["dir"] = str(tmp_path / "a")
    lines: list[str] = []
    api.run(rec, registry=REGISTRY, progress=False, log=lines.append)
    log = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert 0.0 <= log[0]["train/padding_fraction"] < 0.5
    assert not any("read from the cache" in x for x in lines)
    rec["output"]["dir"] = str(tmp_path / "b")
    lines.clear()
    api.run(rec, registry=REGISTRY, progress=False, log=lines.append)
    assert any("read from the cache" in x for x in lines)
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["test"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["test"]
    assert a["accuracy"] == b["accuracy"] and a["macro_f1"] == b["macro_f1"]


def test_head_only_embeds_each_cell_once(
    tiny_h5ad: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Head-only: the frozen backbone embeds the training and validation cells once for
    training; evaluation reuses them and embeds only the rest. Same outputs as predict."""
    import anndata as ad

    from sctune.core import trainer

    seen: list[int] = []
    original = trainer.embed_only

    def counting(backbone, cells, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(len(cells))
        return original(backbone, cells, *a, **k)

    monkeypatch.setattr(trainer, "embed_only", counting)
    rec = testing.example_recipe(REGISTRY, "scgpt", "head", tmp_path, tiny_h5ad, epochs=2)
    result = api.run(rec, registry=REGISTRY, progress=False, log=lambda m: None)
    n = ad.read_h5ad(tiny_h5ad).n_obs
    assert sum(seen) == n  # train + valid during fit, the test cells afterwards
    out = api.predict(result.run_dir, tiny_h5ad, tmp_path / "p.h5ad", registry=REGISTRY)
    got, want = ad.read_h5ad(out), ad.read_h5ad(result.run_dir / "predictions.h5ad")
    np.testing.assert_array_equal(
        got.obs["sctune_prediction"].to_numpy(str), want.obs["sctune_prediction"].to_numpy(str)
    )
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5)
