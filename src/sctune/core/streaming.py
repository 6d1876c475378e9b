"""Training on an ``.h5ad`` file read in chunks of rows (``data.stream: true``).

A file larger than memory is opened backed (``X`` stays on disk). :class:`StreamedData` reads
``data.chunk_size`` cells at a time through the same checks, matrix choice, gene identifiers
and library sizes as an in-memory load (:func:`sctune.core.data.loaded_from_adata`), so a
chunk is exactly what loading those rows alone would give. What a run needs of all cells at
once is small and is kept in memory: ``obs``, the labels, the split. Everything that grows with
the number of genes per cell goes through the file chunk by chunk:

- ``data.hvg``: the per-gene moments of the log-normalised training cells are summed chunk by
  chunk (:func:`sctune.core.preprocess.hvg_from_moments`, the same choice as in memory);
- tokens: each chunk is tokenized with the run's seed (as ``sctune predict`` does) and appended
  to flat files on disk that training memory-maps (:func:`sctune.core.tokencache.tokenize_stream`);
- ``predictions.h5ad``: ``X`` is copied chunk by chunk.

The expression matrix is not handed to the task (``expression=None``): tasks whose extras need
it (GEPC, PCA/Harmony references) say so and turn them off or refuse. A randomly initialised
backbone that derives statistics from the training cells (Geneformer's gene medians) gets the
first ``data.chunk_size`` training cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sctune.core.cells import Expression
from sctune.core.errors import DataError


class OnDiskRows:
    """Stands in for ``Expression.X`` of a streamed run: the rows stay in the file.

    ``X[idx]`` reads those rows (any order, repeats allowed) as a CSR matrix; ``shape`` is the
    matrix's shape. Anything else a CSR matrix offers is deliberately missing, so code that
    would silently need the whole matrix fails loudly instead.
    """

    def __init__(self, data: StreamedData) -> None:
        self.data = data

    @property
    def shape(self) -> tuple[int, int]:
        return (self.data.n_cells, len(self.data.genes))

    def __getitem__(self, idx: Any) -> Any:
        return self.data.expression_of(np.arange(self.data.n_cells)[idx]).X


class StreamedData:
    """One ``.h5ad`` file, opened backed, read ``cfg.chunk_size`` cells at a time."""

    def __init__(self, cfg: Any, *, seed: int) -> None:
        from sctune.core.data import (
            _labels_of,
            _subsample,
            loaded_from_adata,
            read_adata,
        )

        path = cfg.path
        if not isinstance(path, str) or path.startswith("scanpy:"):
            shown = path if isinstance(path, str) else f"{len(path)} files"
            raise DataError(
                f"data.stream: true reads one .h5ad file in chunks; data.path is {shown!r}",
                hint="set data.stream: false for built-in datasets and several files, or "
                "concatenate the files into one .h5ad first",
            )
        self.path = Path(path)
        self.cfg = cfg.model_copy(update={"max_cells": None})
        self.chunk = int(cfg.chunk_size)
        self.src = read_adata(path, where="data.path", backed=True)
        if not getattr(self.src, "isbacked", False):
            raise DataError(
                f"data.stream: '{self.path.name}' cannot be read in chunks (anndata opens only "
                "an HDF5 .h5ad with an X backed)",
                hint="write the file with adata.write_h5ad(...) (not zarr), with the counts in "
                "X, or set data.stream: false",
            )
        self._loaded_from_adata = loaded_from_adata
        n = int(self.src.n_obs)
        self.rows = (
            _subsample(n, cfg.max_cells, seed)
            if cfg.max_cells is not None and n > cfg.max_cells
            else np.arange(n)
        )
        self.n_cells = len(self.rows)
        first = self._read_rows(self.rows[: self.chunk])  # checks, matrix, kind, genes
        self.first = first
        self.source = first.source
        self.notes = [n for n in first.notes if not n.startswith("data.label_column is null")]
        if cfg.label_column is None:  # the note counts every cell, not the first chunk's
            from sctune.core.data import _no_labels_note

            self.notes.append(_no_labels_note(self.n_cells))
        self.keep: list[str] | None = None  # data.hvg
        self.obs = self.src.obs.iloc[self.rows].copy()
        label_column = cfg.label_column
        self.labels = _labels_of(self.obs, label_column, self.path.name, require_labels=True)
        self._check_empty()
        self.cell_ids = tuple(map(str, self.obs.index))
        self.notes.append(
            f"data.stream: X stays in '{self.path.name}', read {self.chunk:,} cells at a time"
        )

    # ---------------------------------------------------------------- reading
    def _read_rows(self, rows: np.ndarray) -> Any:
        """``loaded_from_adata`` of these file rows (sorted), as if they were the whole file,
        except that cells without counts are judged once for the whole file
        (:meth:`_check_empty`), not per chunk."""
        part = self.src[rows].to_memory()
        return self._loaded_from_adata(part, self.cfg, name=self.path.name, check_empty=False)

    def _check_empty(self) -> None:
        """Warn about, or refuse, the run's cells without counts, counted over every chunk (a
        chunk's share would depend on data.chunk_size and on where such cells lie in the file).
        A CSR matrix on disk is judged from its row pointers alone (rows without stored values;
        explicit zeros are not counted); any other layout by reading the chosen matrix only."""
        from scipy import sparse

        from sctune.core.data import check_empty_cells

        empty = self.first.empty_cells
        rest = self.rows[self.chunk :]
        source = self.first.source
        if self.first.expression.kind != "scaled" and len(rest):
            matrix: Any
            if source == "X":
                matrix = self.src.X
            elif source == "raw":
                matrix = self.src.raw.X
            else:  # "layer:<name>"
                matrix = self.src.layers[source.removeprefix("layer:")]
            group = getattr(matrix, "group", None)
            if getattr(matrix, "format", None) == "csr" and group is not None:
                stored = np.diff(np.asarray(group["indptr"][...]))
                empty += int((stored[rest] == 0).sum())
            else:
                for lo in range(0, len(rest), self.chunk):
                    view = self.src[rest[lo : lo + self.chunk]]
                    if source == "X":
                        part = view.X
                    elif source == "raw":
                        part = view.raw.X
                    else:
                        part = view.layers[source.removeprefix("layer:")]
                    part = sparse.csr_matrix(part)
                    empty += int((abs(part).sum(axis=1).A1 == 0).sum())
        check_empty_cells(
            empty,
            self.n_cells,
            chosen=self.first.source,
            name=self.path.name,
            origin="data.path",
        )

    def read(self, positions: np.ndarray) -> Any:
        """The LoadedData of these cells (positions among the run's cells, ascending), with
        ``data.hvg``'s genes kept."""
        loaded = self._read_rows(self.rows[positions])
        expr = loaded.expression
        first = self.first.expression
        if expr.kind != first.kind:
            lo = int(positions[0])
            raise DataError(
                f"data.stream: cells {lo:,}-{int(positions[-1]):,} of '{self.path.name}' hold "
                f"{expr.kind} values in {loaded.source}, the first {self.chunk:,} cells "
                f"{first.kind} values; one file holds one kind of value",
                hint="set data.kind to the kind the file holds, or fix the file",
            )
        if self.keep is not None:
            from sctune.core.preprocess import keep_genes

            loaded = replace(loaded, expression=keep_genes(expr, self.keep))
        return loaded

    def chunks(self, positions: np.ndarray | None = None) -> Iterator[tuple[int, int, Any]]:
        """``(lo, hi, LoadedData)`` for consecutive chunks of the run's cells (or of the given
        ascending ``positions``; ``lo``/``hi`` then index ``positions``)."""
        pos = np.arange(self.n_cells) if positions is None else np.asarray(positions)
        for lo in range(0, len(pos), self.chunk):
            hi = min(len(pos), lo + self.chunk)
            yield lo, hi, self.read(pos[lo:hi])

    def expression_of(self, positions: np.ndarray) -> Expression:
        """The cells at ``positions`` (any order) as an in-memory Expression."""
        positions = np.asarray(positions, dtype=np.int64)
        order = np.unique(positions)
        expr = self.read(order).expression
        back = np.searchsorted(order, positions)
        return replace(
            expr,
            X=expr.X[back],
            cell_ids=tuple(expr.cell_ids[i] for i in back),
            library_size=None if expr.library_size is None else expr.library_size[back],
        )

    # ---------------------------------------------------------------- the run's view
    @property
    def genes(self) -> tuple[str, ...]:
        return self.template().genes

    def template(self) -> Expression:
        """The first chunk's Expression with the run's genes (metadata for the whole file)."""
        expr = self.first.expression
        if self.keep is not None:
            from sctune.core.preprocess import keep_genes

            expr = keep_genes(expr, self.keep)
        return expr

    def expression(self) -> Expression:
        """An Expression for every cell whose ``X`` is :class:`OnDiskRows`."""
        t = self.template()
        return replace(
            t,
            X=OnDiskRows(self),
            cell_ids=self.cell_ids,
            library_size=None,
        )

    def select_hvg(self, train: np.ndarray, n_hvg: int) -> list[str]:
        """:func:`sctune.core.preprocess.select_hvg` over the training cells, chunk by chunk."""
        from sctune.core.preprocess import hvg_from_moments, lognorm

        genes = self.first.expression.genes
        total = np.zeros(len(genes))
        squares = np.zeros(len(genes))
        for _, _, part in self.chunks(np.sort(train)):
            X = lognorm(part.expression)
            total += np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
            squares += np.asarray(X.multiply(X).sum(axis=0), dtype=np.float64).ravel()
        n = max(len(train), 1)
        return hvg_from_moments(genes, total / n, squares / n, n_hvg)

    def write_x(self, h5ad: Path) -> None:
        """Write the run's cells' matrix (the chosen matrix, the kept genes) as ``X`` of the
        file ``h5ad``, which has none yet, one chunk at a time."""
        import h5py  # type: ignore[import-untyped]

        try:
            from anndata.io import sparse_dataset, write_elem
        except ImportError:  # anndata < 0.11
            from anndata.experimental import sparse_dataset, write_elem

        with h5py.File(h5ad, "r+") as f:
            for lo, _, part in self.chunks():
                if lo == 0:
                    write_elem(f, "X", part.expression.X, dataset_kwargs={"compression": "gzip"})
                    stored = sparse_dataset(f["X"])
                else:
                    stored.append(part.expression.X)

    def close(self) -> None:
        try:
            self.src.file.close()
        except Exception:  # already closed
            pass


def is_on_disk(expr: Any) -> bool:
    return isinstance(getattr(expr, "X", None), OnDiskRows)
