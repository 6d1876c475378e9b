"""Expression helpers for task authors: log-normalisation and HVG selection on an
:class:`~sctune.core.cells.Expression` (numpy/scipy only; no torch).

Tasks that reconstruct expression (batch correction's GEPC, pretraining's GEPC) or build
reference embeddings share these, so every task reads the same matrix the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def lognorm(expression: Any) -> Any:
    """log1p(counts / library * 1e4) for counts; log-normalised and scaled data unchanged."""
    from scipy import sparse

    X = sparse.csr_matrix(expression.X, dtype=np.float32)
    if expression.kind != "counts":
        return X
    lib = expression.library_size
    if lib is None:
        lib = np.asarray(X.sum(axis=1)).ravel()
    lib = np.where(np.asarray(lib, dtype=np.float64) > 0, lib, 1.0)
    X = sparse.csr_matrix(X.multiply(1e4 / lib[:, None]), dtype=np.float32)
    X.data = np.log1p(X.data)
    return X


def select_hvg(expression: Any, train: np.ndarray, n_hvg: int) -> list[str]:
    """The ``n_hvg`` genes of highest log-normalised variance over the TRAINING cells."""
    X = lognorm(expression)[train]
    n = max(X.shape[0], 1)
    mean = np.asarray(X.sum(axis=0), dtype=np.float64).ravel() / n
    sq = np.asarray(X.multiply(X).sum(axis=0), dtype=np.float64).ravel() / n
    return hvg_from_moments(expression.genes, mean, sq, n_hvg)


def hvg_from_moments(genes: Any, mean: np.ndarray, sq: np.ndarray, n_hvg: int) -> list[str]:
    """The ``n_hvg`` genes of highest variance ``sq - mean**2`` (per-gene mean of the values and
    of their squares), in column order; a duplicated identifier counts once (its first
    column), genes without variance never. Shared by the in-memory and the chunked choice."""
    var = sq - mean**2
    genes = list(genes)
    first = {g: i for i, g in reversed(list(enumerate(genes)))}
    idx = [i for i in np.argsort(-var, kind="stable") if first[genes[i]] == i and var[i] > 0]
    return [genes[i] for i in sorted(idx[: min(n_hvg, len(idx))])]


def keep_genes(expression: Any, genes: Any) -> Any:
    """``expression`` restricted to ``genes`` (in ``genes``' order; genes it lacks are skipped;
    the first column of a duplicated identifier). The cells then look like a file holding only
    these genes: for counts the library size becomes the row sums of the kept columns, so a
    run (``data.hvg``) and ``sctune predict`` on new cells normalise the same way."""
    from dataclasses import replace

    first: dict[str, int] = {}
    for i, g in enumerate(expression.genes):
        first.setdefault(str(g), i)
    cols = [first[str(g)] for g in genes if str(g) in first]
    X = expression.X[:, cols].tocsr()

    def pick(names: Any) -> Any:
        return None if names is None else tuple(names[i] for i in cols)

    library = None
    if expression.kind == "counts":
        library = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    return replace(
        expression,
        X=X,
        genes=pick(expression.genes),
        gene_symbols=pick(expression.gene_symbols),
        gene_ids=pick(expression.gene_ids),
        library_size=library,
    )


EMBEDDING_METRIC_CELLS = 20_000
"""Default cap on the cells an embedding metric or plot looks at (silhouette, UMAP, scib and the
probes grow with the square of the cells or close to it; classification metrics use all)."""


def metric_sample(n: int, cap: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted rows of a random sample of ``cap`` of ``n`` cells (fixed ``seed``, so the same
    sample every evaluation), or ``None`` when ``cap`` is ``None`` or ``n <= cap`` (use all)."""
    if cap is None or n <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
