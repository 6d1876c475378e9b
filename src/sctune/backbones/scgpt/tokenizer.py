"""scGPT tokenisation (methods.md section 12): vocabulary match, log1p, per-cell binning, <cls>.

Per cell: keep the vocabulary genes, normalise counts to 1e4 and log1p (log-normalised data are
used as they are), bin the non-zero values into ``n_bins - 1`` per-cell quantile bins (zeros stay
0, ties between equal edges are broken at random, seeded; ``value_style="log1p"`` keeps the log1p
values instead), keep the non-zero genes, prepend ``<cls>`` with value 0 and, above
``max_seq_len - 1`` genes, keep a seeded random subset (chosen once). Padding (``<pad>``, value
``pad_value``) happens per batch in ``TokenizedCells.collate``.

All of it runs vectorised over the cells (numpy); only cells above ``max_seq_len - 1`` genes
draw their subsets one by one, in cell order, after the tie-breaking draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

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
ValueStyle = Literal["binned", "log1p"]
VALUE_STYLES: tuple[str, ...] = ("binned", "log1p")


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
    used = {str(genes[j]) for j in cols}  # a duplicate's later copies are not "dropped" genes
    dropped = tuple([str(genes[j]) for j in np.flatnonzero(~hit) if str(genes[j]) not in used][:5])
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


def _row_order(
    data: np.ndarray, indptr: np.ndarray, lengths: np.ndarray, budget: int = 1 << 22
) -> np.ndarray:
    """A permutation that sorts ``data`` by row, then by value (equal values in any order).

    Rows of similar length are sorted together as the rows of a dense ``+inf``-padded block
    (``np.argsort(axis=1)``), several times faster than ``np.lexsort`` over all values.
    """
    if not np.isfinite(data).all():  # +inf would tie with the padding
        return np.lexsort((data, np.repeat(np.arange(len(lengths)), lengths)))
    order = np.empty(len(data), dtype=np.int64)
    nonempty = np.flatnonzero(lengths)
    if not len(nonempty):
        return order
    width_class = np.ceil(4 * np.log2(lengths[nonempty])).astype(np.int64)  # widths within 19%
    nonempty = nonempty[np.argsort(width_class, kind="stable")]
    classes = np.sort(width_class)
    bounds = np.flatnonzero(np.diff(classes)) + 1
    for members in np.split(nonempty, bounds):
        width = int(lengths[members].max())
        step = max(1, budget // width)
        for a in range(0, len(members), step):
            block = members[a : a + step]
            start = indptr[block][:, None]
            inside = np.arange(width) < lengths[block][:, None]
            where = (start + np.arange(width))[inside]
            padded = np.full(inside.shape, np.inf)
            padded[inside] = data[where]
            order[where] = (start + np.argsort(padded, axis=1))[inside]
    return order


def _bracketed(below: np.ndarray, edges: np.ndarray, above: np.ndarray) -> np.ndarray:
    """Rows whose every edge lies between the two sorted values it interpolates."""
    return ((below <= edges) & (edges <= above)).all(axis=1)


def bin_rows(X: sparse.csr_matrix, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """Bin every stored non-zero of ``X`` per row into ``1..n_bins-1``; returns ``data``'s bins.

    Edges are the row's non-zero quantiles at ``linspace(0, 1, n_bins - 1)`` (numpy's linear
    method); a value is digitised to a uniform random choice between ``np.digitize``'s left and
    right indices, which spreads ties over the tied bins (scGPT's ``_digitize``).

    Vectorised over rows, exactly: edge ``k`` of a row is interpolated between two neighbouring
    sorted values of that row, so comparing it with those two values and their tie groups gives
    ``p = #(values < edge)`` and ``q = #(values <= edge)`` as integers, and a value's digitize
    indices are ``#(p <= first index of its tie group)`` and ``#(q < one past its last)``; no
    float is searched across rows. A row whose edges leave that bracket through rounding (not
    seen in practice) is digitised with ``np.searchsorted``, row by row.
    """
    data, indptr = X.data, np.asarray(X.indptr, dtype=np.int64)
    nnz = len(data)
    lengths = np.diff(indptr)
    order = _row_order(data, indptr, lengths)
    sorted_data = data[order]
    rands = rng.random(nnz)
    if not nnz:
        return np.zeros(0, dtype=np.int64)
    nonempty = np.flatnonzero(lengths)
    row_start = indptr[nonempty]

    # Tie groups of the sorted values (a row start always opens one): id of each position.
    opens = np.ones(nnz, dtype=bool)
    opens[1:] = sorted_data[1:] != sorted_data[:-1]
    opens[row_start] = True
    group_start = np.flatnonzero(opens)
    group_stop = np.append(group_start[1:], nnz)
    group = np.cumsum(opens) - 1
    del opens

    # Per-row edges as np.quantile's linear method computes them, (rows, n_bins - 1), and
    # p = #(values < edge), q = #(values <= edge) as global positions.
    qs = np.linspace(0.0, 1.0, n_bins - 1)
    start = row_start[:, None]
    n = lengths[nonempty][:, None]
    pos = qs * (n - 1)
    f = np.floor(pos).astype(np.int64)
    c = np.minimum(f + 1, n - 1)
    t = pos - f
    below, above = sorted_data[start + f], sorted_data[start + c]
    edges = below + (above - below) * t
    bracketed = _bracketed(below, edges, above)
    g_below, g_above = group[start + f], group[start + c]
    between = start + f + 1
    at_below, at_above = edges == below, edges == above
    p = np.where(at_below, group_start[g_below], np.where(at_above, group_start[g_above], between))
    q = np.where(at_above, group_stop[g_above], np.where(at_below, group_stop[g_below], between))
    p[~bracketed] = start[~bracketed]  # keeps p and q sorted; these rows are redone below
    q[~bracketed] = start[~bracketed] + 1
    del pos, f, c, t, below, above, g_below, g_above, between, at_below, at_above, group

    # Digitize indices per tie group. Rows hold disjoint position ranges and every edge of an
    # earlier row counts, so one search over all rows less (n_bins - 1) per earlier row.
    base = (n_bins - 1) * (np.searchsorted(row_start, group_start, side="right") - 1)
    left = np.searchsorted(p.ravel(), group_start, side="right") - base  # np.digitize
    right = np.searchsorted(q.ravel(), group_stop, side="left") - base  # ..., right=True
    sizes = group_stop - group_start
    left, right = np.repeat(left, sizes), np.repeat(right, sizes)
    out = np.empty(nnz, dtype=np.int64)
    out[order] = np.ceil(rands[order] * (right - left) + left)
    del order, left, right
    for i in np.flatnonzero(~bracketed):
        lo, hi = indptr[nonempty[i]], indptr[nonempty[i] + 1]
        x = data[lo:hi]
        left = np.searchsorted(edges[i], x, side="right")  # == np.digitize(x, edges)
        right = np.searchsorted(edges[i], x, side="left")  # == np.digitize(x, edges, right=True)
        out[lo:hi] = np.ceil(rands[lo:hi] * (right - left) + left)
    return np.clip(out, 1, n_bins - 1)


def _skip_draws(rng: np.random.Generator, n: int, chunk: int = 1 << 20) -> None:
    """Advance ``rng`` past the ``rng.random(n)`` that binning draws (in bounded chunks)."""
    for size in range(n, 0, -chunk):
        rng.random(min(size, chunk))


def tokenize(
    expr: Expression,
    vocab: Mapping[str, int],
    *,
    max_seq_len: int,
    n_bins: int,
    min_gene_match: float,
    pad_value: float,
    seed: int,
    value_style: ValueStyle = "binned",
) -> TokenizedCells:
    """Turn every cell of ``expr`` into ``gene_ids``/``values`` arrays (``<cls>`` first).

    ``value_style="binned"`` puts the per-cell bins into ``values``; ``"log1p"`` the normalised
    log1p values themselves (float32; ``n_bins`` unused). The random generator is advanced the
    same way for both, so both keep the same genes of a cell above ``max_seq_len - 1``.
    """
    if value_style not in VALUE_STYLES:
        raise ValueError(f"value_style must be one of {VALUE_STYLES}, not {value_style!r}")
    genes, match = choose_genes(expr, vocab)
    check_match(match, genes, min_gene_match, has_symbols=expr.gene_symbols is not None)
    cols, ids = _gene_columns(genes, vocab)
    X = normalise(sparse.csr_matrix(expr.X)[:, cols], expr.kind)
    X.sort_indices()
    rng = np.random.default_rng(seed)
    if value_style == "binned":
        values = bin_rows(X, n_bins, rng)
    else:
        _skip_draws(rng, X.nnz)
        values = X.data
    cls_id, pad_id = vocab["<cls>"], vocab["<pad>"]
    indptr = np.asarray(X.indptr, dtype=np.int64)
    lengths = np.diff(indptr)
    keep = max_seq_len - 1
    taken = np.ones(X.nnz, dtype=bool)
    for r in np.flatnonzero(lengths > keep):  # seeded subsets, drawn in row order
        lo, hi = X.indptr[r], X.indptr[r + 1]
        pick = rng.choice(hi - lo, size=keep, replace=False)
        taken[lo:hi] = False
        taken[lo + pick] = True  # the subset stays in gene order
    offsets = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.minimum(lengths, keep) + 1, out=offsets[1:])
    body = np.ones(offsets[-1], dtype=bool)
    body[offsets[:-1]] = False  # <cls> positions
    flat_ids = np.full(offsets[-1], cls_id, dtype=np.int64)
    flat_ids[body] = ids[X.indices[taken]]
    flat_values = np.zeros(offsets[-1], dtype=np.float32)
    flat_values[body] = values[taken]
    bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    return TokenizedCells(
        fields={
            "gene_ids": [flat_ids[a:b] for a, b in bounds],
            "values": [flat_values[a:b] for a, b in bounds],
        },
        pad_values={"gene_ids": pad_id, "values": pad_value},
        dtypes={"gene_ids": torch.long, "values": torch.float32},
        gene_match=match,
        meta={
            "n_bins": n_bins,
            "max_seq_len": max_seq_len,
            "seed": seed,
            "value_style": value_style,
        },
    )
