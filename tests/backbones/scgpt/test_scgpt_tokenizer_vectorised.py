"""scGPT tokenizer: the vectorised binning and cell arrays equal the former per-cell loops bit for
bit; ``value_style='log1p'`` puts the normalised log1p values in ``values``."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml
from scipy import sparse

from sctune import api, testing
from sctune.backbones.scgpt import tokenizer
from sctune.backbones.scgpt.config import ScGPTConfig
from sctune.backbones.scgpt.plugin import ScGPTBackbone
from sctune.backbones.scgpt.tokenizer import (
    _gene_columns,
    bin_rows,
    choose_genes,
    normalise,
    tokenize,
)
from sctune.backbones.scgpt.weights import read_args, write_checkpoint
from sctune.core import tokencache
from sctune.core.cells import Expression
from sctune.core.errors import SctuneWarning

# ---- the former implementation, kept verbatim as the reference ---------------------------------


def _reference_bin_rows(X: sparse.csr_matrix, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    data, indptr = X.data, X.indptr
    lengths = np.diff(indptr)
    rows = np.repeat(np.arange(X.shape[0]), lengths)
    order = np.lexsort((data, rows))  # sorted by row, then value
    sorted_data = data[order]
    qs = np.linspace(0.0, 1.0, n_bins - 1)
    out = np.zeros(len(data), dtype=np.int64)
    rands = rng.random(len(data))
    for r in np.flatnonzero(lengths):
        lo, hi = indptr[r], indptr[r + 1]
        row = sorted_data[lo:hi]
        pos = qs * (len(row) - 1)
        f = np.floor(pos).astype(np.int64)
        c = np.minimum(f + 1, len(row) - 1)
        t = pos - f
        edges = row[f] + (row[c] - row[f]) * t
        x = data[lo:hi]
        left = np.searchsorted(edges, x, side="right")  # == np.digitize(x, edges)
        right = np.searchsorted(edges, x, side="left")  # == np.digitize(x, edges, right=True)
        out[lo:hi] = np.ceil(rands[lo:hi] * (right - left) + left)
    return np.clip(out, 1, n_bins - 1)


def _reference_tokenize(expr, vocab, *, max_seq_len, n_bins, seed):
    genes, _ = choose_genes(expr, vocab)
    cols, ids = _gene_columns(genes, vocab)
    X = normalise(sparse.csr_matrix(expr.X)[:, cols], expr.kind)
    X.sort_indices()
    rng = np.random.default_rng(seed)
    binned = _reference_bin_rows(X, n_bins, rng)
    cls_id = vocab["<cls>"]
    gene_ids, values = [], []
    keep = max_seq_len - 1
    for r in range(X.shape[0]):
        lo, hi = X.indptr[r], X.indptr[r + 1]
        g, v = ids[X.indices[lo:hi]], binned[lo:hi]
        if hi - lo > keep:
            pick = np.sort(rng.choice(hi - lo, size=keep, replace=False))
            g, v = g[pick], v[pick]
        gene_ids.append(np.concatenate([[cls_id], g]).astype(np.int64))
        values.append(np.concatenate([[0.0], v]).astype(np.float32))
    return gene_ids, values


# ---- random data with every awkward case ---------------------------------------------------------


def _matrix(seed: int, n_cells: int = 60, n_genes: int = 50, style: str = "counts"):
    """Sparse rows with ties, empty rows, single non-zeros and rows of every gene."""
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.05, 0.9)
    mask = rng.random((n_cells, n_genes)) < density
    mask[0] = False  # empty cell
    mask[1] = False
    mask[1, rng.integers(n_genes)] = True  # one expressed gene
    mask[2] = True  # every gene
    mask[3, :3] = True  # three genes, rest as drawn
    if style == "counts":  # small integers: many ties
        vals = rng.integers(1, rng.integers(2, 12), (n_cells, n_genes)).astype(np.float64)
    elif style == "lognorm":
        counts = rng.integers(1, 6, (n_cells, n_genes))
        vals = np.log1p(counts * 1e4 / rng.integers(500, 20000, (n_cells, 1)))
    elif style == "distinct":
        vals = rng.random((n_cells, n_genes)) + 1e-3
    else:  # extreme magnitudes, subnormals and neighbouring floats
        vals = rng.choice(
            [5e-324, 1e-300, 1e-8, 1.0, np.nextafter(1.0, 2.0), 7.5, 1e300], mask.shape
        )
    return sparse.csr_matrix(np.where(mask, vals, 0.0))


def _expr(X, genes, kind):
    X = sparse.csr_matrix(X, dtype=np.float32)
    return Expression(
        X=X,
        genes=tuple(genes),
        kind=kind,
        library_size=None,
        cell_ids=tuple(f"c{i}" for i in range(X.shape[0])),
    )


def _assert_same_cells(cells, want_ids, want_values):
    assert len(cells) == len(want_ids)
    for i in range(len(cells)):
        got = cells[i]
        assert got["gene_ids"].dtype == np.int64 and got["values"].dtype == np.float32
        assert np.array_equal(got["gene_ids"], want_ids[i])
        assert np.array_equal(got["values"], want_values[i])


@pytest.mark.parametrize("style", ["counts", "lognorm", "distinct", "extreme"])
@pytest.mark.parametrize("n_bins", [3, 11, 51])
@pytest.mark.parametrize("seed", range(4))
def test_bin_rows_equals_the_row_loop(style: str, n_bins: int, seed: int) -> None:
    X = _matrix(seed, style=style, n_genes=int(np.random.default_rng(seed).integers(1, 120)))
    got = bin_rows(X, n_bins, np.random.default_rng(seed))
    want = _reference_bin_rows(X, n_bins, np.random.default_rng(seed))
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_bin_rows_edge_cases() -> None:
    rng = np.random.default_rng
    for X in (
        sparse.csr_matrix((0, 5)),  # no cells
        sparse.csr_matrix((4, 5)),  # only empty cells
        sparse.csr_matrix(np.array([[0.0, 2.0, 0.0]])),  # one value
        sparse.csr_matrix(np.full((3, 40), 4.0)),  # one tie group per cell
        sparse.csr_matrix(np.array([[1.0, np.inf, 2.0], [3.0, 1.0, 1.0]])),  # lexsort fallback
    ):
        with np.errstate(invalid="ignore"):  # inf - inf in the edges of the last case
            assert np.array_equal(bin_rows(X, 51, rng(0)), _reference_bin_rows(X, 51, rng(0)))


def test_rows_outside_the_bracket_fall_back_to_the_search(monkeypatch) -> None:
    real = tokenizer._bracketed

    def every_other_row(below, edges, above):
        ok = real(below, edges, above)
        ok[::2] = False
        return ok

    monkeypatch.setattr(tokenizer, "_bracketed", every_other_row)
    for seed, style in enumerate(("counts", "lognorm", "extreme")):
        X = _matrix(seed, style=style)
        got = bin_rows(X, 51, np.random.default_rng(seed))
        assert np.array_equal(got, _reference_bin_rows(X, 51, np.random.default_rng(seed)))


def test_row_order_sorts_each_row_in_blocks() -> None:
    X = _matrix(3, n_cells=200, n_genes=300, style="counts")
    indptr = X.indptr.astype(np.int64)
    for budget in (1, 7, 1 << 22):
        order = tokenizer._row_order(X.data, indptr, np.diff(indptr), budget=budget)
        assert np.array_equal(np.sort(order), np.arange(X.nnz))
        rows = np.repeat(np.arange(X.shape[0]), np.diff(indptr))
        assert np.array_equal(rows[order], rows)
        assert np.array_equal(X.data[order], X.data[np.lexsort((X.data, rows))])


@pytest.mark.parametrize("kind", ["counts", "lognorm"])
@pytest.mark.parametrize("max_seq_len", [2, 11, 64])
@pytest.mark.parametrize("seed", range(3))
def test_tokenize_equals_the_cell_loop(h, kind: str, max_seq_len: int, seed: int) -> None:
    X = _matrix(seed, n_cells=50, n_genes=len(h.GENES), style=kind)
    genes = list(h.GENES[:-5]) + ["NOTAGENE", *h.GENES[-4:]]  # an unknown gene, a duplicate
    genes[7] = genes[3]
    expr = _expr(X, genes, kind)
    vocab = h.tiny_vocab()
    cells = tokenize(
        expr,
        vocab,
        max_seq_len=max_seq_len,
        n_bins=51,
        min_gene_match=0.5,
        pad_value=-2,
        seed=seed,
    )
    want = _reference_tokenize(expr, vocab, max_seq_len=max_seq_len, n_bins=51, seed=seed)
    _assert_same_cells(cells, *want)
    assert cells.lengths().tolist() == [len(g) for g in want[0]]


# ---- value_style: log1p ---------------------------------------------------------------------


def _config(h, tmp_path, **kw) -> ScGPTConfig:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(h.tiny_vocab()))
    return ScGPTConfig(vocab=path, embsize=32, nheads=4, d_hid=64, nlayers=2, **kw)


def test_log1p_values_of_counts_are_normalise_total_then_log1p(h, tmp_path) -> None:
    expr = h.make_expression(n_cells=30, density=0.6)
    cfg = _config(h, tmp_path, value_style="log1p", max_seq_len=64)
    cells = ScGPTBackbone().tokenize(expr, cfg, seed=0)
    assert cells.meta["value_style"] == "log1p"
    counts = expr.X.toarray().astype(np.float64)
    vocab = h.tiny_vocab()
    for i in range(expr.n_cells):
        row = counts[i]
        nz = np.flatnonzero(row)
        want = np.log1p(row[nz] * (1e4 / row.sum())).astype(np.float32)
        got = cells[i]
        assert got["values"][0] == 0 and got["gene_ids"][0] == vocab["<cls>"]
        assert np.array_equal(got["gene_ids"][1:], [vocab[h.GENES[j]] for j in nz])
        assert got["values"].dtype == np.float32 and np.array_equal(got["values"][1:], want)
    sc = pytest.importorskip("scanpy")
    adata = ad.AnnData(expr.X.copy())
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    flat = np.concatenate([cells[i]["values"][1:] for i in range(len(cells))])
    np.testing.assert_allclose(flat, sparse.csr_matrix(adata.X).data, rtol=1e-6, atol=0)


def test_log1p_values_of_lognorm_data_are_unchanged(h, tmp_path) -> None:
    expr = h.make_expression(n_cells=30, kind="lognorm")
    cells = ScGPTBackbone().tokenize(expr, _config(h, tmp_path, value_style="log1p"), seed=0)
    X = sparse.csr_matrix(expr.X)
    X.sort_indices()
    for i in range(expr.n_cells):
        assert np.array_equal(cells[i]["values"][1:], X[i].data)


def test_log1p_keeps_the_genes_binned_keeps(h, tmp_path) -> None:
    expr = h.make_expression(n_cells=20, density=0.9)  # ~45 genes per cell, 10 kept
    binned = ScGPTBackbone().tokenize(expr, _config(h, tmp_path, max_seq_len=11), seed=3)
    logged = ScGPTBackbone().tokenize(
        expr, _config(h, tmp_path, max_seq_len=11, value_style="log1p"), seed=3
    )
    for i in range(len(binned)):
        assert np.array_equal(binned[i]["gene_ids"], logged[i]["gene_ids"])
        assert not np.array_equal(binned[i]["values"], logged[i]["values"])
    assert binned.meta["value_style"] == "binned"


def test_token_cache_key_tells_the_styles_apart(h, tmp_path) -> None:
    expr = h.make_expression()
    backbone = ScGPTBackbone()
    keys = {
        style: tokencache.cache_key(
            backbone, _config(h, tmp_path, value_style=style), expr, seed=0
        )
        for style in ("binned", "log1p")
    }
    assert keys["binned"] != keys["log1p"]


def test_checkpoint_input_style_is_read_and_written(h, tmp_path) -> None:
    backbone = ScGPTBackbone()
    folder = Path(backbone.example_config(tmp_path, h.GENES)["checkpoint"])
    args = read_args(folder)
    assert "input_style" not in args  # none recorded: no note
    assert backbone._value_style_clash(ScGPTConfig(checkpoint=folder)) is None
    (folder / "args.json").write_text(json.dumps({**args, "input_style": "log1p"}))
    with pytest.warns(SctuneWarning, match="(?s)input_style 'log1p'.*value_style=log1p"):
        backbone.tokenize(h.make_expression(), ScGPTConfig(checkpoint=folder), seed=0)
    cfg = ScGPTConfig(checkpoint=folder, value_style="log1p")
    assert backbone._value_style_clash(cfg) is None
    module = backbone.build(cfg)
    out = tmp_path / "exported"
    options = backbone.export_checkpoint(module.state_dict(), cfg, out)
    assert options["value_style"] == "log1p"
    assert read_args(out)["input_style"] == "log1p"
    normed = {**args, "input_style": "normed_raw"}
    write_checkpoint(tmp_path / "normed", module.state_dict(), normed, h.tiny_vocab())
    note = backbone._value_style_clash(ScGPTConfig(checkpoint=tmp_path / "normed"))
    assert "'normed_raw'" in note and "'binned' or 'log1p' values only" in note


def test_pretrain_small_with_log1p_runs_and_predict_reproduces_it(registry, tmp_path) -> None:
    name = "scgpt/pretrain_small"
    overrides = [
        "backbone.value_style=log1p",
        "data.max_cells=90",
        "trainer.epochs=1",
        "trainer.num_threads=1",
        "output.plots=false",
        f"output.dir={tmp_path / 'run'}",
        *testing.light_task_overrides(api.get_registry(), name),
    ]
    result = api.run(name, overrides, registry=registry, progress=False, log=lambda m: None)
    run = result.run_dir
    assert read_args(run / "pretrained")["input_style"] == "log1p"
    listed = yaml.safe_load((run / "pretrained" / "backbone.yaml").read_text())["backbone"]
    assert listed["value_style"] == "log1p"
    want = ad.read_h5ad(run / "predictions.h5ad")
    got = ad.read_h5ad(api.predict(run, run / "predictions.h5ad", tmp_path / "again.h5ad"))
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5, rtol=0)
