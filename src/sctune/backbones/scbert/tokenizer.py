"""scBERT's input: every gene of a fixed order gets an expression level 0..5 at its position.

1. Reindex the cells onto the gene order (genes absent from the data read 0; a symbol occurring
   twice in the data keeps its first column).
2. Raw counts: scale each cell to 10,000 over the reindexed genes (``normalize_total(1e4)``
   after reindexing, as scBERT did), then ``log2(1 + x)``.
   Log-normalised input is assumed to be ``ln(1 + x)`` of 1e4-normalised counts (scanpy's
   default) and is converted to base 2 with a warning. Scaled data (negatives) is refused.
3. Token = ``min(int(value), 5)``; one 0 is appended (position ``n_genes``), so every cell has
   ``n_genes + 1`` tokens. Tokens are stored as ``uint8`` and batched as ``long``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse

from sctune.backbones.scbert.model import MASK_TOKEN, MAX_LEVEL
from sctune.core.cells import Expression, GeneMatch, TokenizedCells, looks_like_ensembl
from sctune.core.errors import DataError, SctuneWarning

TARGET_SUM = 1e4
_CHUNK = 512


def match_genes(genes: Sequence[str], order: Sequence[str], *, via: str) -> GeneMatch:
    """How many of ``genes`` have a position in ``order``."""
    positions = set(order)
    matched = [g for g in genes if g in positions]
    dropped = tuple(g for g in genes if g not in positions)[:5]
    covered = len(set(matched))
    return GeneMatch(
        n_genes=len(genes),
        n_matched=len(matched),
        vocabulary_size=len(order),
        namespace="symbol",
        via=via,
        dropped_examples=dropped,
        notes=(
            (
                f"{covered:,} of the {len(order):,} gene-order positions are filled from the "
                "data; the rest read 0"
            ),
        ),
    )


def _pick_namespace(expr: Expression, order: Sequence[str]) -> tuple[tuple[str, ...], str]:
    candidates = [(expr.genes, "gene identifier")]
    if expr.gene_symbols is not None:
        candidates.append((expr.gene_symbols, "gene symbol column"))
    positions = set(order)
    return max(candidates, key=lambda c: sum(g in positions for g in c[0]))


def _no_match_error(genes: Sequence[str], order: Sequence[str]) -> DataError:
    first = ", ".join(f"'{g}'" for g in list(genes)[:3])
    text = f"backbone 'scbert': none of the data's {len(genes):,} genes ({first}, ...) is in the "
    text += f"{len(order):,}-gene order"
    if looks_like_ensembl(genes):
        text += "\n  the data's genes look like Ensembl ids; scBERT's gene order holds symbols"
        return DataError(
            text,
            hint="set data.gene_column to a var column with gene symbols (e.g. 'gene_symbol')",
        )
    return DataError(text, hint="check that 'backbone.gene_order' is the order the model used")


def _reindex_matrix(genes: Sequence[str], order: Sequence[str]) -> sparse.csr_matrix:
    """0/1 matrix ``(len(genes), len(order))`` selecting each order gene's first data column."""
    index = {g: i for i, g in enumerate(order)}
    rows, cols, seen = [], [], set()
    for col, gene in enumerate(genes):
        pos = index.get(gene)
        if pos is not None and pos not in seen:
            seen.add(pos)
            rows.append(col)
            cols.append(pos)
    data = np.ones(len(rows), dtype=np.float64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(genes), len(order)))


def expression_levels(expr: Expression, order: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The ``(cells, n_genes + 1)`` uint8 token matrix and any warnings issued."""
    notes: list[str] = []
    if expr.kind == "scaled":
        raise DataError(
            "backbone 'scbert' needs counts or log-normalised values, but the expression matrix "
            "has negative values (scaled data)",
            hint="point data.layer at raw counts (e.g. adata.raw or a 'counts' layer)",
        )
    if expr.kind == "lognorm":
        notes.append(
            "expression looks log-normalised, not counts; assuming ln(1+x) of counts scaled to "
            "10,000 and converting to log2 (scBERT used log2(1+x) of counts scaled to 10,000 "
            "over its gene order); give raw counts for the exact preprocessing: values scaled "
            "over the whole library sit lower than counts scaled over a gene order that holds "
            "part of a cell's counts (5-7x for a 762-gene order), so a checkpoint pretrained on "
            "counts sees lower bins than it was trained on"
        )
    genes, _ = _pick_namespace(expr, order)
    select = _reindex_matrix(genes, order)
    X = sparse.csr_matrix(expr.X, dtype=np.float64) @ select
    X = sparse.csr_matrix(X)
    tokens = np.zeros((X.shape[0], len(order) + 1), dtype=np.uint8)
    for start in range(0, X.shape[0], _CHUNK):
        block = X[start : start + _CHUNK].tocsr(copy=True)
        if expr.kind == "counts":
            totals = np.asarray(block.sum(axis=1)).ravel()
            scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
            block = sparse.csr_matrix(sparse.diags(scale) @ block)
            block.data = np.log2(1.0 + block.data)
        else:
            block.data = block.data / math.log(2.0)
        dense = np.minimum(np.floor(block.toarray()), MAX_LEVEL)
        tokens[start : start + _CHUNK, : len(order)] = dense.astype(np.uint8)
    return tokens, notes


def tokenize(
    expr: Expression, order: Sequence[str], *, min_gene_match: float, min_genes: int
) -> TokenizedCells:
    """Tokenize every cell (see the module docstring); no cell is dropped."""
    genes, via = _pick_namespace(expr, order)
    match = match_genes(genes, order, via=via)
    if match.n_matched == 0:
        raise _no_match_error(genes, order)
    if match.fraction < min_gene_match:
        raise DataError(
            f"backbone 'scbert': only {match.summary()}; 'min_gene_match' is {min_gene_match}",
            hint="check data.gene_column, or lower backbone.min_gene_match",
        )
    tokens, notes = expression_levels(expr, order)
    if min_genes > 0:
        expressed = (tokens[:, : len(order)] > 0).sum(axis=1)
        low = int((expressed < min_genes).sum())
        if low:
            notes.append(
                f"{low:,} of {len(tokens):,} cells have fewer than {min_genes} expressed genes on "
                "the gene order (scBERT dropped such cells); sctune keeps them so splits stay "
                "intact: filter the data beforehand to match scBERT"
            )
    for note in notes:
        warnings.warn(note, SctuneWarning, stacklevel=2)
    return TokenizedCells(
        fields={"tokens": tokens},
        pad_values={"tokens": MASK_TOKEN},
        dtypes={"tokens": torch.long},
        gene_match=match,
        meta={"notes": notes, "n_positions": len(order) + 1},
    )
