"""Geneformer rank-value tokenizer, reimplemented and vectorised over CSR rows.

Per cell: ``x_g / n_counts * 1e4 / median_g`` over genes in the median dictionary (duplicate
Ensembl ids summed first), zeros dropped, genes sorted by that value descending (ties: data column
order), token ids emitted and truncated to the model input size. V2 adds ``<cls>`` first and
``<eos>`` last inside the same budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from sctune.core.cells import GeneMatch, looks_like_ensembl, looks_like_mouse_symbols
from sctune.core.errors import CheckpointError, DataError

TARGET_SUM = 1e4


@dataclass(frozen=True)
class GeneformerVocab:
    """The dictionaries and input format of one Geneformer model."""

    tokens: Mapping[str, int]
    medians: Mapping[str, float]
    name_to_id: Mapping[str, str] = field(default_factory=dict)
    id_mapping: Mapping[str, str] = field(default_factory=dict)
    special: bool = False  # V2: <cls> first, <eos> last
    max_input_size: int = 2048

    @property
    def pad_id(self) -> int:
        return int(self.tokens["<pad>"])

    @property
    def cls_id(self) -> int | None:
        return self.tokens.get("<cls>")

    @property
    def eos_id(self) -> int | None:
        return self.tokens.get("<eos>")

    @property
    def gene_budget(self) -> int:
        return self.max_input_size - 2 if self.special else self.max_input_size


@dataclass(frozen=True)
class ColumnMap:
    """Per data column: the Ensembl id used (or ``None``) and how the mapping went."""

    ensembl: tuple[str | None, ...]
    match: GeneMatch


def _strip_version(gene: str) -> str:
    head, dot, tail = gene.partition(".")
    return head if dot and tail.isdigit() and head.upper().startswith("ENS") else gene


def map_columns(
    genes: Sequence[str], vocab: GeneformerVocab, *, gene_ids: Sequence[str] | None = None
) -> ColumnMap:
    """Map the data's gene identifiers to Ensembl ids in the vocabulary.

    Order of preference: the identifiers themselves when they look like Ensembl ids, then the
    ``gene_ids`` column, then symbols through the name map (exact, then upper-case). Without a
    name map, identifiers are looked up as they are (random-init vocabularies built from data).
    """
    genes = [str(g) for g in genes]
    notes: list[str] = []
    if looks_like_ensembl(genes):
        ids: list[str | None] = [_strip_version(g) for g in genes]
        via, namespace = "identifier", "ensembl"
    elif gene_ids is not None and looks_like_ensembl(gene_ids):
        ids = [_strip_version(str(g)) if str(g) else None for g in gene_ids]
        via, namespace = "the Ensembl id column beside the symbols", "ensembl"
    elif vocab.name_to_id:
        if looks_like_mouse_symbols(genes):  # never pair mouse genes with human ones by spelling
            ids = [vocab.name_to_id.get(g) for g in genes]
            notes.append(
                "identifiers look like mouse symbols: matched exactly, not case-insensitively"
            )
        else:
            upper = {k.upper(): v for k, v in vocab.name_to_id.items()}
            ids = [vocab.name_to_id.get(g) or upper.get(g.upper()) for g in genes]
        n_mapped = sum(i is not None for i in ids)
        via, namespace = "symbol -> ensembl map (gene_name_id_dict)", "ensembl"
        notes.append(f"{n_mapped:,} of {len(genes):,} symbols have an Ensembl id in the name map")
    else:
        ids = list(genes)
        via, namespace = (
            "identifier",
            "symbol" if not looks_like_ensembl(vocab.medians) else "ensembl",
        )
    if vocab.id_mapping:
        ids = [vocab.id_mapping.get(i.upper(), i) if i else None for i in ids]
    final = tuple(
        i if i is not None and i in vocab.medians and i in vocab.tokens else None for i in ids
    )
    matched = [i for i in final if i is not None]
    n_dup = len(matched) - len(set(matched))
    if n_dup:
        notes.append(
            f"{n_dup:,} columns share an Ensembl id with another column; their counts are summed"
        )
    n_not_in_dict = sum(1 for i, f in zip(ids, final) if i is not None and f is None)
    if n_not_in_dict:
        notes.append(f"{n_not_in_dict:,} mapped ids are not in the token/median dictionaries")
    dropped = tuple(g for g, f in zip(genes, final) if f is None)[:10]
    match = GeneMatch(
        n_genes=len(genes),
        n_matched=len(matched),
        vocabulary_size=len(vocab.tokens),
        namespace=namespace,
        via=via,
        dropped_examples=dropped,
        notes=tuple(notes),
    )
    return ColumnMap(ensembl=final, match=match)


def require_match(match: GeneMatch, genes: Sequence[str], minimum: float) -> None:
    """Raise :class:`DataError` when no gene, or too few, map to the vocabulary."""
    examples = ", ".join(f"'{g}'" for g in list(genes)[:5])
    if match.n_matched == 0:
        mouse = any(
            str(g).upper().startswith("ENSMUSG") for g in genes[:50]
        ) or looks_like_mouse_symbols(genes)
        raise DataError(
            f"backbone 'geneformer': none of the {len(genes):,} genes ({examples}, ...) map to the "
            f"{match.vocabulary_size:,}-token vocabulary via {match.via}",
            hint=(
                "these look like mouse genes; Geneformer's dictionaries are human Ensembl ids"
                if mouse
                else "give human Ensembl ids (set data.gene_column) or a 'gene_name_id_dict' for "
                "symbols"
            ),
        )
    if match.fraction < minimum:
        raise DataError(
            f"backbone 'geneformer': only {match.summary()}; 'min_gene_match' is {minimum}",
            hint="check the gene column and the dictionaries, or lower 'min_gene_match'",
        )


def rank_tokens(
    X: sparse.spmatrix,
    library_size: np.ndarray,
    column_ids: Sequence[str | None],
    vocab: GeneformerVocab,
) -> list[np.ndarray]:
    """Token id arrays, one per cell (see the module docstring).

    ``X`` holds counts (or counts-like values), ``library_size`` the per-cell totals.
    """
    # Kept genes in order of first appearance; a 0/1 matrix sums duplicate columns.
    order: dict[str, int] = {}
    rows, cols = [], []
    for j, gid in enumerate(column_ids):
        if gid is not None:
            rows.append(j)
            cols.append(order.setdefault(gid, len(order)))
    kept = list(order)
    collapse = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(X.shape[1], len(kept))
    )
    Y = (sparse.csr_matrix(X, dtype=np.float64) @ collapse).tocsr()
    Y.eliminate_zeros()
    Y.sort_indices()
    n_cells = Y.shape[0]
    lengths = np.diff(Y.indptr)
    row_of = np.repeat(np.arange(n_cells), lengths)
    lib = np.asarray(library_size, dtype=np.float64).reshape(-1)
    lib = np.where(lib > 0, lib, 1.0)
    medians = np.array([vocab.medians[g] for g in kept], dtype=np.float64)
    token_of = np.array([vocab.tokens[g] for g in kept], dtype=np.int64)
    values = Y.data / lib[row_of] * TARGET_SUM / medians[Y.indices]
    perm = rank_order(row_of, values)
    rank = np.arange(len(perm)) - np.repeat(Y.indptr[:-1], lengths)
    keep = rank < vocab.gene_budget
    ids = token_of[Y.indices[perm]][keep]
    kept_len = np.minimum(lengths, vocab.gene_budget)
    pieces = np.split(ids, np.cumsum(kept_len)[:-1]) if n_cells else []
    if vocab.special:
        cls, eos = np.int64(vocab.cls_id), np.int64(vocab.eos_id)
        pieces = [np.concatenate(([cls], p, [eos])) for p in pieces]
    return pieces


def rank_order(row_of: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The order of the stored values by row, then value descending, then their stored order
    (column order after ``sort_indices``: the stable tie break) - what
    ``np.lexsort((positions, -values, row_of))`` gives, as two stable sorts (radix on the row
    ids), about 3x faster on 20 M values (10.1 s -> 3.1 s)."""
    by_value = np.argsort(-values, kind="stable")
    return by_value[np.argsort(row_of[by_value], kind="stable")]


def load_vocab(config: Any, n_positions: int | None = None) -> GeneformerVocab:
    """The dictionaries and input format of ``config`` (a ``GeneformerConfig``).

    ``n_positions`` (the model's position embeddings) bounds and defaults ``max_input_size``.
    """
    from sctune.backbones.geneformer import dictionaries as d

    if not config.token_dictionary or not config.gene_median_dictionary:
        missing = [
            k for k in ("token_dictionary", "gene_median_dictionary") if not getattr(config, k)
        ]
        raise CheckpointError(
            "backbone 'geneformer' needs " + " and ".join(f"'{k}'" for k in missing),
            hint="give the Geneformer dictionary files (.json or .pkl); a randomly initialised "
            "model derives them from the data during resolve",
        )
    tokens = d.load_token_dictionary(config.token_dictionary)
    has_specials = "<cls>" in tokens and "<eos>" in tokens
    if config.version == "v2" and not has_specials:
        raise CheckpointError(
            f"backbone 'geneformer': version 'v2' needs '<cls>' and '<eos>' in the token "
            f"dictionary '{config.token_dictionary}'",
            hint="use version 'v1' or 'auto' with a V1 dictionary",
        )
    special = config.version == "v2" or (config.version == "auto" and has_specials)
    size = config.max_input_size or n_positions or (4096 if special else 2048)
    if n_positions is not None and size > n_positions:
        raise CheckpointError(
            f"backbone 'geneformer': max_input_size {size} exceeds the model's "
            f"{n_positions} position embeddings",
            hint=f"set max_input_size to at most {n_positions}",
        )
    return GeneformerVocab(
        tokens=tokens,
        medians=d.load_median_dictionary(config.gene_median_dictionary),
        name_to_id=(
            d.load_string_map(config.gene_name_id_dict, what="gene name id dict")
            if config.gene_name_id_dict
            else {}
        ),
        id_mapping=(
            d.load_string_map(config.ensembl_mapping_dict, what="ensembl mapping dict")
            if config.ensembl_mapping_dict
            else {}
        ),
        special=special,
        max_input_size=size,
    )
