"""scGPT tokenisation: binning, <cls>, padding, subsets, determinism and refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import sparse

from sctune.backbones.scgpt.config import ScGPTConfig
from sctune.backbones.scgpt.plugin import ScGPTBackbone
from sctune.backbones.scgpt.tokenizer import bin_rows
from sctune.core.cells import Expression
from sctune.core.errors import DataError

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@pytest.fixture
def config(h, tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(h.tiny_vocab()))
    return ScGPTConfig(vocab=path, embsize=32, nheads=4, d_hid=64, nlayers=2, max_seq_len=64)


def _reference_bins(row, n_bins):
    """np.quantile + np.digitize on one row of distinct values (no ties: no randomness)."""
    nz = row[row > 0]
    edges = np.quantile(nz, np.linspace(0, 1, n_bins - 1))
    out = np.zeros_like(row, dtype=np.int64)
    out[row > 0] = np.digitize(nz, edges)
    return out


def test_binning_matches_numpy_reference_without_ties():
    rng = np.random.default_rng(0)
    dense = rng.random((30, 200)) * (rng.random((30, 200)) < 0.6)
    dense[3] = 0.0  # an all-zero row
    X = sparse.csr_matrix(dense)
    bins = bin_rows(X, 51, np.random.default_rng(1))
    got = sparse.csr_matrix((bins, X.indices, X.indptr), shape=X.shape).toarray()
    for r in range(30):
        if dense[r].any():
            assert np.array_equal(got[r], _reference_bins(dense[r], 51))
    assert not got[3].any()
    assert got[dense > 0].min() == 1 and got[dense > 0].max() == 50


def test_ties_are_spread_and_seeded():
    X = sparse.csr_matrix(np.array([[1.0] * 40 + [2.0] * 10]))
    a = bin_rows(X, 51, np.random.default_rng(0))
    b = bin_rows(X, 51, np.random.default_rng(0))
    assert np.array_equal(a, b)
    assert len(np.unique(a[:40])) > 5  # tied values spread over the tied bins
    assert a[:40].max() <= a[40:].min() and a[40:].max() == 50


def test_tokens_cls_first_values_and_padding(h, config):
    expr = h.make_expression(kind="counts")
    cells = ScGPTBackbone().tokenize(expr, config, seed=0)
    vocab = h.tiny_vocab()
    assert len(cells) == expr.n_cells
    assert cells.gene_match.n_matched == len(h.GENES)
    for i in range(len(cells)):
        item = cells[i]
        assert item["gene_ids"][0] == vocab["<cls>"] and item["values"][0] == 0
        assert len(item["gene_ids"]) == expr.X[i].nnz + 1
        assert set(np.unique(item["values"][1:])) <= set(range(1, 51))
    batch = cells.collate([cells[0], cells[1], cells[2]])
    width = batch["gene_ids"].shape[1]
    short = min(range(3), key=lambda r: len(cells[r]["gene_ids"]))
    n = len(cells[short]["gene_ids"])
    if n < width:
        assert (batch["gene_ids"][short, n:] == vocab["<pad>"]).all()
        assert (batch["values"][short, n:] == -2).all()
        assert batch["padding_mask"][short, n:].all()
    assert batch["gene_ids"].dtype == torch.long


def test_counts_and_lognorm_give_same_bins_without_ties(h, config):
    # binning is per-cell and rank-based: normalise+log1p must not change the ranks
    rng = np.random.default_rng(0)
    X = sparse.csr_matrix(rng.permutation(np.arange(1, 51, dtype=np.float32))[None, :])
    counts = Expression(
        X=X, genes=tuple(h.GENES), kind="counts", library_size=None, cell_ids=("a",)
    )
    logn = Expression(
        X=sparse.csr_matrix(np.log1p(X.toarray() * 3.1)),
        genes=tuple(h.GENES),
        kind="lognorm",
        library_size=None,
        cell_ids=("a",),
    )
    a = ScGPTBackbone().tokenize(counts, config, seed=0)[0]
    b = ScGPTBackbone().tokenize(logn, config, seed=0)[0]
    assert np.array_equal(a["values"], b["values"])
    assert a["values"][1:].max() == 50


def test_max_length_subset_is_seeded(h, config):
    cfg = config.model_copy(update={"max_seq_len": 11})
    expr = h.make_expression(n_cells=10, density=0.9)
    a = ScGPTBackbone().tokenize(expr, cfg, seed=5)
    b = ScGPTBackbone().tokenize(expr, cfg, seed=5)
    c = ScGPTBackbone().tokenize(expr, cfg, seed=6)
    assert all(len(a[i]["gene_ids"]) == 11 for i in range(10))
    assert all(np.array_equal(a[i]["gene_ids"], b[i]["gene_ids"]) for i in range(10))
    assert any(not np.array_equal(a[i]["gene_ids"], c[i]["gene_ids"]) for i in range(10))
    assert len(set(a[0]["gene_ids"][1:])) == 10


def test_unmatched_genes_dropped_and_threshold(h, config):
    genes = h.GENES[:30] + [f"NOTAGENE{i}" for i in range(20)]
    cells = ScGPTBackbone().tokenize(h.make_expression(genes=genes), config, seed=0)
    assert cells.gene_match.n_matched == 30
    ids = np.concatenate([cells[i]["gene_ids"][1:] for i in range(len(cells))])
    assert set(ids.tolist()) <= set(range(30))
    strict = config.model_copy(update={"min_gene_match": 0.9})
    with pytest.raises(
        DataError, match=r"(?s)only 60.0% of genes.*'NOTAGENE0'.*min_gene_match=0.9"
    ):
        ScGPTBackbone().tokenize(h.make_expression(genes=genes), strict, seed=0)


def test_scaled_data_refused(h, config):
    with pytest.raises(DataError, match="(?s)cannot use scaled expression.*data.source=raw"):
        ScGPTBackbone().tokenize(h.make_expression(kind="scaled"), config, seed=0)


def test_ensembl_refused_and_symbol_column_used(h, config):
    ens = [f"ENSG{i:011d}" for i in range(len(h.GENES))]
    with pytest.raises(DataError, match="look like Ensembl ids.*no symbol column"):
        ScGPTBackbone().tokenize(h.make_expression(genes=ens), config, seed=0)
    cells = ScGPTBackbone().tokenize(
        h.make_expression(genes=ens, gene_symbols=tuple(h.GENES)), config, seed=0
    )
    assert cells.gene_match.n_matched == len(h.GENES)
    assert cells.gene_match.via == "symbol column"


def test_gene_match_and_resolve(h, tmp_path):
    backbone = ScGPTBackbone()
    cfg = ScGPTConfig(embsize=32, nheads=4, d_hid=64, nlayers=1)
    assert backbone.gene_match(h.GENES, cfg).fraction == 1.0
    resolved = backbone.resolve(cfg, genes=h.GENES, run_dir=tmp_path / "run")
    vocab = json.loads(Path(resolved.vocab).read_text())
    assert list(vocab)[:3] == h.GENES[:3] and {"<pad>", "<cls>", "<eoc>"} <= set(vocab)
    assert set(backbone.fingerprint(resolved)) == {"vocab.json"}
    model = backbone.build(resolved)
    cells = backbone.tokenize(h.make_expression(), resolved, seed=0)
    out = model(cells.collate([cells[i] for i in range(4)]))
    assert out.cell.shape == (4, 32)


def test_pbmc68k_reduced_raw_lognorm():
    sc = pytest.importorskip("scanpy")
    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()
    X = sparse.csr_matrix(adata.X, dtype=np.float32)
    genes = tuple(adata.var_names)
    vocab = {g: i for i, g in enumerate(genes[::2])}  # half the genes known
    vocab.update({"<pad>": len(vocab), "<cls>": len(vocab) + 1})
    expr = Expression(
        X=X, genes=genes, kind="lognorm", library_size=None, cell_ids=tuple(adata.obs_names)
    )
    from sctune.backbones.scgpt.tokenizer import tokenize

    cells = tokenize(
        expr, vocab, max_seq_len=2001, n_bins=51, min_gene_match=0.4, pad_value=-2, seed=0
    )
    assert len(cells) == adata.n_obs
    assert 0.49 < cells.gene_match.fraction < 0.51
    assert all(cells[i]["values"][1:].min() >= 1 for i in range(len(cells)))


def test_pbmc3k_speed():
    path = DATA / "pbmc3k_seurat_labeled.h5ad"
    if not path.exists():
        pytest.skip("shared data not available")
    ad = pytest.importorskip("anndata")
    adata = ad.read_h5ad(path)
    census = DATA / "vocab" / "scgpt_census_vocab.json"
    vocab = (
        json.loads(census.read_text())
        if census.exists()
        else {g: i for i, g in enumerate(adata.var_names)}
    )
    for tok in ("<pad>", "<cls>", "<eoc>"):
        vocab.setdefault(tok, max(vocab.values()) + 1)
    expr = Expression(
        X=sparse.csr_matrix(adata.X, dtype=np.float32),
        genes=tuple(adata.var_names),
        kind="counts",
        library_size=None,
        cell_ids=tuple(adata.obs_names),
    )
    from sctune.backbones.scgpt.tokenizer import tokenize

    t0 = time.perf_counter()
    cells = tokenize(
        expr, vocab, max_seq_len=2001, n_bins=51, min_gene_match=0.5, pad_value=-2, seed=0
    )
    elapsed = time.perf_counter() - t0
    assert len(cells) == 2638 and cells.gene_match.fraction > 0.85
    assert elapsed < 15, f"tokenising pbmc3k took {elapsed:.1f}s"


def test_a_duplicated_gene_is_counted_once_and_not_reported_as_dropped() -> None:
    from sctune.backbones.scgpt.tokenizer import match_genes

    vocab = {"<pad>": 0, "<cls>": 1, "A": 2, "B": 3}
    m = match_genes(["A", "B", "A", "ZZZ"], vocab)
    assert m.n_matched == 2
    assert m.dropped_examples == ("ZZZ",)
    assert any("1 duplicate gene names" in n for n in m.notes)
