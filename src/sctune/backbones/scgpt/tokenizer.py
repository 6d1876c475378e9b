"""scGPT tokenisation (methods.md section 12): vocabulary match, log1p, per-cell binning, <cls>.

Per cell: keep the vocabulary genes, normalise counts to 1e4 and log1p (log-normalised data are
used as they are), bin the non-zero values into ``n_bins - 1`` per-cell quantile bins (zeros stay
0, ties between equal edges are broken at random, seeded), keep the non-zero genes, prepend
``<cls>`` with value 0 and, above ``max_seq_len - 1`` genes, keep a seeded random subset (chosen
once). Padding (``<pad>``, value ``pad_value``) happens per batch in ``TokenizedCells.collate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import sparse

from sctune.core.cells import (
    Expression,
    GeneMatch,
    TokenizedCells,
    looks_like_ensembl,
    looks_like_mouse_symbols,
)
from sctune.core.errors import DataError

SPECIAL_PREFIX = "<"


def _gene_columns(genes: Sequence[str], vocab: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Columns whose gene is in ``vocab`` (first occurrence of each id) and their ids."""
    cols, ids, seen = [], [], set()
    for j, g in enumerate(genes):
        i = vocab.get(str(g))
        if i is None or str(g).startswith(SPECIAL_PREFIX) or i in seen:
            continue
        seen.add(i)
        cols.append(j)
        ids.append(i)
    return np.asarray(cols, dtype=np.int64), np.asarray(ids, dtype=np.int64)


def match_genes(
    genes: Sequence[str], vocab: Mapping[str, int], *, via: str = "identifier"
) -> GeneMatch:
    """Report how ``genes`` map onto the symbol vocabulary."""
    cols, _ = _gene_columns(genes, vocab)
    hit = np.zeros(len(genes), dtype=bool)
    hit[cols] = True
    dropped = tuple(str(genes[j]) for j in np.flatnonzero(~hit)[:5])
    notes = []
    n_dup = sum(1 for g in genes if str(g) in vocab) - len(cols)
    if n_dup:
        notes.append(f"{n_dup} duplicate gene names: only the first column of each is used")
    n_special = sum(1 for g in vocab if g.startswith(SPECIAL_PREFIX))
    return GeneMatch(
        n_genes=len(genes),
        n_matched=len(cols),
        vocabulary_size=len(vocab) - n_special,
        namespace="symbol",
        via=via,
        dropped_examples=dropped,
        notes=tuple(notes),
    )


def choose_genes(expr: Expression, vocab: Mapping[str, int]) -> tuple[Sequence[str], GeneMatch]:
    """Pick the gene names that fit the vocabulary: ``genes`` or, if better, ``gene_symbols``."""
    best = (expr.genes, match_genes(expr.genes, vocab))
    if expr.gene_symbols is not None:
        alt = match_genes(expr.gene_symbols, vocab, via="symbol column")
        if alt.n_matched > best[1].n_matched:
            best = (expr.gene_symbols, alt)
    return best


def check_match(
    match: GeneMatch, genes: Sequence[str], min_fraction: float, *, has_symbols: bool = False
) -> None:
    """Raise ``DataError`` when too few genes are in the vocabulary."""
    if match.n_matched and match.fraction >= min_fraction:
        return
    examples = ", ".join(f"'{g}'" for g in list(genes)[:3])
    if looks_like_ensembl(genes) and not has_symbols:
        raise DataError(
            f"backbone 'scgpt' needs gene symbols, but the genes look like Ensembl ids "
            f"({examples}, ...) and the data has no symbol column; "
            f"{match.n_matched} of {match.n_genes} genes are in the vocabulary\n"
            "  set data.gene_column to a var column with HGNC symbols (e.g. 'gene_symbols')"
        )
    what = "no gene" if not match.n_matched else f"only {match.fraction:.1%} of genes"
    hint = (
        "these look like mouse symbols; scGPT's whole-human vocabulary holds human HGNC symbols"
        if looks_like_mouse_symbols(genes)
        else None
    )
    raise DataError(
        f"backbone 'scgpt': {what} found in the vocabulary ({match.summary()})\n"
        f"  the minimum is backbone.min_gene_match={min_fraction}\n"
        "  check data.gene_column (HGNC symbols expected) or lower backbone.min_gene_match",
        hint=hint,
    )


def normalise(X: sparse.csr_matrix, kind: str) -> sparse.csr_matrix:
    """Counts -> normalise_total(1e4) + log1p; lognorm -> unchanged; scaled -> ``DataError``."""
    if kind == "scaled":
        raise DataError(
            "backbone 'scgpt' cannot use scaled expression (negative values): binning needs "
            "non-negative counts or log-normalised values\n"
            "  point data at raw counts or log-normalised values: data.source=raw, "
            "data.source=layer:<name>, or the unscaled matrix"
        )
    X = sparse.csr_matrix(X, dtype=np.float64, copy=True)
    if kind == "counts":
        totals = np.asarray(X.sum(axis=1)).ravel()
        scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
        X.data *= np.repeat(scale, np.diff(X.indptr))
        np.log1p(X.data, out=X.data)
    X.eliminate_zeros()
    return X


def bin_rows(X: sparse.csr_matrix, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """Bin every stored non-zero of ``X`` per row into ``1..n_bins-1``; returns ``data``'s bins.

    Edges are the row's non-zero quantiles at ``linspace(0, 1, n_bins - 1)`` (numpy's linear
    method); a value is digitised to a uniform random choice between ``np.digitize``'s left and
    right indices, which spreads ties over the tied bins (scGPT's ``_digitize``).
    """
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


def tokenize(
    expr: Expression,
    vocab: Mapping[str, int],
    *,
    max_seq_len: int,
    n_bins: int,
    min_gene_match: float,
    pad_value: float,
    seed: int,
) -> TokenizedCells:
    """Turn every cell of ``expr`` into ``gene_ids``/``values`` arrays (``<cls>`` first)."""
    genes, match = choose_genes(expr, vocab)
    check_match(match, genes, min_gene_match, has_symbols=expr.gene_symbols is not None)
    cols, ids = _gene_columns(genes, vocab)
    X = normalise(sparse.csr_matrix(expr.X)[:, cols], expr.kind)
    X.sort_indices()
    rng = np.random.default_rng(seed)
    binned = bin_rows(X, n_bins, rng)
    cls_id, pad_id = vocab["<cls>"], vocab["<pad>"]
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
    return TokenizedCells(
        fields={"gene_ids": gene_ids, "values": values},
        pad_values={"gene_ids": pad_id, "values": pad_value},
        dtypes={"gene_ids": torch.long, "values": torch.float32},
        gene_match=match,
        meta={"n_bins": n_bins, "max_seq_len": max_seq_len, "seed": seed},
    )
