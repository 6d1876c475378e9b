"""Data handed between the core and backbones: expression in, tokens out, embeddings back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy import sparse

ExpressionKind = Literal["counts", "lognorm", "scaled"]


@dataclass(frozen=True)
class Expression:
    """The cells a backbone tokenizes, after the core picked the matrix and detected its kind.

    Attributes
    ----------
    X
        ``(cells, genes)`` CSR float32 matrix: raw counts, log1p-normalised values or scaled
        values, as ``kind`` says.
    genes
        Gene identifiers in column order (``data.gene_column`` or ``var_names``).
    kind
        ``"counts"`` (non-negative integers), ``"lognorm"`` (non-negative, non-integer) or
        ``"scaled"`` (has negatives; unusable by every built-in backbone).
    library_size
        Per-cell total counts over the full library when known (``obs['n_counts']``), else the
        row sums of ``X`` for counts, else ``None``.
    cell_ids
        ``obs_names`` in row order.
    gene_symbols
        Gene symbols in column order when the data has a symbol column beside the identifiers
        (e.g. ``var['gene_symbol']`` next to Ensembl ``var_names``), else ``None``.
    gene_ids
        Ensembl gene ids in column order when the data has an id column beside symbol
        identifiers (``var['gene_ids']``, ``var['ensembl_id']``), else ``None``.

    A backbone picks the namespace its vocabulary uses: ``genes`` first, then the alternates;
    :func:`looks_like_ensembl` tells the two apart.
    """

    X: sparse.csr_matrix
    genes: tuple[str, ...]
    kind: ExpressionKind
    library_size: np.ndarray | None
    cell_ids: tuple[str, ...]
    gene_symbols: tuple[str, ...] | None = None
    gene_ids: tuple[str, ...] | None = None

    @property
    def n_cells(self) -> int:
        return int(self.X.shape[0])


def looks_like_ensembl(genes: Sequence[str], *, threshold: float = 0.5) -> bool:
    """True when most identifiers look like Ensembl gene ids (``ENSG...``, ``ENSMUSG...``)."""
    genes = list(genes)
    if not genes:
        return False
    hits = sum(
        1 for g in genes if str(g).upper().startswith("ENS") and any(c.isdigit() for c in g)
    )
    return hits / len(genes) >= threshold


def looks_like_mouse_symbols(genes: Sequence[str], *, threshold: float = 0.5) -> bool:
    """True when most identifiers are Title-case symbols (``Cd3e``, ``Ms4a1``), as in mouse data.

    Human HGNC symbols are upper case; matching mouse symbols case-insensitively onto a human
    vocabulary would silently pair orthologues by spelling, so backbones refuse to.
    """
    sample = [str(g) for g in list(genes)[:500] if str(g)[:1].isalpha()]
    if not sample:
        return False
    hits = sum(1 for g in sample if g[:1].isupper() and any(c.islower() for c in g[1:]))
    return hits / len(sample) >= threshold


@dataclass(frozen=True)
class GeneMatch:
    """How the data's genes map onto a backbone vocabulary (reported by preflight)."""

    n_genes: int
    n_matched: int
    vocabulary_size: int
    namespace: str  # "symbol" | "ensembl" | ...
    via: str = "identifier"  # e.g. "symbol -> ensembl map"
    dropped_examples: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        return self.n_matched / self.n_genes if self.n_genes else 0.0

    def summary(self) -> str:
        text = (
            f"matched {self.n_matched:,} of {self.n_genes:,} genes ({self.fraction:.1%}) to a "
            f"{self.vocabulary_size:,}-token {self.namespace} vocabulary via {self.via}"
        )
        if self.dropped_examples:
            text += "; dropped e.g. " + ", ".join(f"'{g}'" for g in self.dropped_examples[:5])
        return text


class _Picked(Sequence[np.ndarray]):
    """Some rows of a flat field with offsets (e.g. memory-mapped tokens), without copying."""

    def __init__(self, base: Any, idx: np.ndarray) -> None:
        self.base, self.idx = base, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.base[int(self.idx[i])]

    def lengths(self) -> np.ndarray:
        return np.diff(self.base.offsets)[self.idx]


@dataclass
class TokenizedCells(torch.utils.data.Dataset):
    """Per-cell token arrays of variable length, padded per batch by :meth:`collate`.

    ``fields`` maps a batch key to one 1-D array per cell (all fields of a cell have the same
    length). ``pad_values`` gives each field's padding value; ``dtypes`` its torch dtype.
    :meth:`collate` adds ``padding_mask`` (bool, ``True`` = padding).
    """

    fields: Mapping[str, Sequence[np.ndarray]]
    pad_values: Mapping[str, float]
    dtypes: Mapping[str, torch.dtype]
    gene_match: GeneMatch | None = None
    meta: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.fields.items()}

    def lengths(self) -> np.ndarray:
        """Tokens per cell (``int64``), e.g. for length-bucketed batching."""
        first = next(iter(self.fields.values()))
        offsets = getattr(first, "offsets", None)
        if offsets is not None:
            return np.diff(offsets)
        if isinstance(first, _Picked):
            return first.lengths()
        return np.fromiter((len(a) for a in first), dtype=np.int64, count=len(first))

    def subset(self, indices: Sequence[int] | np.ndarray) -> TokenizedCells:
        idx = [int(i) for i in indices]

        def pick(v: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
            if getattr(v, "offsets", None) is not None:  # flat on disk: index, do not copy
                return _Picked(v, np.asarray(idx, dtype=np.int64))
            return [v[i] for i in idx]

        return TokenizedCells(
            fields={k: pick(v) for k, v in self.fields.items()},
            pad_values=self.pad_values,
            dtypes=self.dtypes,
            gene_match=self.gene_match,
            meta=self.meta,
        )

    def collate(self, items: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        lengths = [len(next(iter(item.values()))) for item in items]
        width = max(lengths)
        batch: dict[str, torch.Tensor] = {}
        for key in self.fields:
            out = np.full((len(items), width), self.pad_values[key], dtype=np.float64)
            for row, item in enumerate(items):
                out[row, : len(item[key])] = item[key]
            batch[key] = torch.as_tensor(out).to(self.dtypes[key])
        mask = np.ones((len(items), width), dtype=bool)
        for row, n in enumerate(lengths):
            mask[row, :n] = False
        batch["padding_mask"] = torch.as_tensor(mask)
        return batch


@dataclass
class EncoderOutput:
    """What a backbone module's ``forward(batch)`` returns.

    ``cell`` is the cell embedding ``(batch, hidden)``; ``tokens`` the per-position outputs
    ``(batch, length, hidden)`` with prompt positions already stripped, aligned with
    ``padding_mask``.
    """

    cell: torch.Tensor
    tokens: torch.Tensor | None = None
    padding_mask: torch.Tensor | None = None
