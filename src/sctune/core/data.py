"""Data in: AnnData loading, matrix choice, counts detection, splits and the preflight report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from sctune.core.cells import Expression, ExpressionKind, looks_like_ensembl
from sctune.core.errors import DataError, did_you_mean, quoted

if TYPE_CHECKING:
    import anndata as ad

    from sctune.core.recipe import DataConfig, SplitConfig

# name -> label column; '_counts' rebuilds the integer counts from scanpy's .raw (see below)
BUILTIN_DATASETS = {
    "scanpy:pbmc68k_reduced": "bulk_labels",
    "scanpy:pbmc68k_reduced_counts": "bulk_labels",
    "scanpy:pbmc68k_two_batches": "bulk_labels",
}
BUILTIN_CELLS = dict.fromkeys(BUILTIN_DATASETS, "scanpy:pbmc68k_reduced")
"""Which cells a built-in dataset holds (all three: scanpy's 700 pbmc68k_reduced cells)."""
SPLITS = ("train", "valid", "test")


def read_adata(path: str, *, where: str = "data.path", backed: bool = False) -> ad.AnnData:
    """Read an ``.h5ad`` file or a built-in dataset name (``scanpy:pbmc68k_reduced``).

    ``where`` names the source in error messages: the recipe key ``data.path``, or e.g.
    ``query`` for the file given to ``sctune predict``. ``backed=True`` opens a file read-only
    with ``X`` left on disk (``adata[a:b].to_memory()`` reads rows); built-in datasets are in
    memory either way.
    """
    if path.startswith("scanpy:"):
        if path not in BUILTIN_DATASETS:
            raise DataError(
                f"{where}: unknown built-in dataset '{path}'{did_you_mean(path, BUILTIN_DATASETS)}\n"
                f"  built-in datasets: {quoted(BUILTIN_DATASETS)}"
            )
        import scanpy as sc

        adata = sc.datasets.pbmc68k_reduced()
        adata.obs["cell_type"] = adata.obs[BUILTIN_DATASETS[path]].astype(str)
        if path.endswith("_counts"):
            adata = _pbmc68k_counts(adata)
        elif path.endswith("_two_batches"):
            adata = _two_batches(_pbmc68k_counts(adata))
        return adata
    file = Path(path)
    if where.startswith("data.path"):
        where_hint = (
            "relative paths in a recipe file resolve against its folder, on the command "
            "line against the working directory; or use 'scanpy:pbmc68k_reduced'"
        )
    else:
        where_hint = "give the path of an .h5ad file, relative to the working directory"
    if file.is_dir():
        raise DataError(
            f"{where}: '{path}' is a directory, not an .h5ad file",
            hint="give the .h5ad file inside it (a .zarr store: convert it with "
            "anndata.read_zarr(path).write_h5ad('cells.h5ad'))",
        )
    if not file.is_file():
        raise DataError(
            f"{where}: file '{path}' does not exist (working directory: {Path.cwd()})",
            hint=where_hint,
        )
    import anndata as ad

    if backed and _has_x(file):
        try:
            return ad.read_h5ad(file, backed="r")
        except Exception:  # anndata cannot back it: read it whole, or say why not
            pass
    try:
        return ad.read_h5ad(file)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"{where}: '{path}' could not be read as h5ad ({type(exc).__name__}: {first})",
            hint="sctune reads AnnData .h5ad files (adata.write_h5ad); the file may be "
            "truncated or in another format",
        ) from exc


def _has_x(file: Path) -> bool:
    """Whether ``file`` is an HDF5 h5ad with an ``X`` (only then can anndata open it backed)."""
    try:
        import h5py  # type: ignore[import-untyped]

        with h5py.File(file, "r") as f:
            return "X" in f
    except Exception:
        return False


def describe_path(path: str | list[str] | dict[str, str]) -> str:
    """``data.path`` for a log line: ``'cells.h5ad'``, or ``2 files (a: a.h5ad, b: b.h5ad)``."""
    from sctune.core.recipe import data_files

    files = data_files(path)
    if files is None:
        return f"'{path}'"
    shown = ", ".join(f"{b}: {Path(p).name}" for b, p in files)
    return f"{_count(len(files), 'file')} ({shown})"


def _pbmc68k_counts(adata: ad.AnnData) -> ad.AnnData:
    """pbmc68k_reduced with integer counts in ``X``: ``expm1(.raw.X) * n_counts / 1e4``, rounded.

    scanpy's ``.raw.X`` is ``log1p(counts / n_counts * 1e4)`` rounded to 3 decimals, with
    ``obs["n_counts"]`` the full-library size, so this recovers the counts: every one of the
    174,400 non-zero values equals scanpy's own ``layers/counts`` (largest distance from an
    integer before rounding: 0.08). Refused if a scanpy release changes the data.
    """
    import anndata as ad

    if "counts" in adata.layers:  # newer scanpy releases may ship the counts themselves
        counts = sparse.csr_matrix(adata.layers["counts"])
    else:
        raw = sparse.csr_matrix(adata.raw.X, dtype=np.float64)
        lib = adata.obs["n_counts"].to_numpy(dtype=np.float64)
        values = np.expm1(raw.data) * np.repeat(lib, np.diff(raw.indptr)) / 1e4
        if values.size and np.abs(values - np.round(values)).max() > 0.25:
            raise DataError(
                "data.path: 'scanpy:pbmc68k_reduced_counts' could not rebuild integer counts "
                "from this scanpy's pbmc68k_reduced",
                hint="use 'scanpy:pbmc68k_reduced' (log-normalised) or an .h5ad with counts",
            )
        counts = sparse.csr_matrix((np.round(values), raw.indices, raw.indptr), shape=raw.shape)
    counts = counts.astype(np.int32)
    counts.eliminate_zeros()
    out = ad.AnnData(X=counts, obs=adata.obs.copy(), var=adata.var.copy())
    out.obsm["X_umap"] = adata.obsm["X_umap"]
    return out


def _two_batches(adata: ad.AnnData) -> ad.AnnData:
    """pbmc68k_reduced counts as two SYNTHETIC batches, for demos and tests of batch correction.

    Cells alternate between ``obs["batch"]`` ``a`` and ``b``; in ``b`` every gene's counts are
    multiplied by a fixed log-normal factor (sd 0.5, seed 0) and sampled from a Poisson with that
    mean, a gene-specific capture difference such as two protocols give. Cell types are
    unchanged (``obs["cell_type"]``). Real multi-batch data is what a benchmark should use.
    """
    rng = np.random.default_rng(0)
    X = sparse.csr_matrix(adata.X, dtype=np.float64)
    factor = np.exp(rng.normal(0.0, 0.5, X.shape[1]))
    b = np.arange(X.shape[0]) % 2 == 1
    Xb = sparse.csr_matrix(X[b].multiply(factor[None, :]))
    Xb.data = rng.poisson(Xb.data).astype(np.float64)
    X = sparse.vstack([X[~b], Xb]).tocsr()
    order = np.concatenate([np.flatnonzero(~b), np.flatnonzero(b)])
    X = X[np.argsort(order)]
    X.eliminate_zeros()
    out = adata.copy()
    out.X = X.astype(np.int32)
    out.obs["batch"] = np.where(b, "b", "a")
    return out


def detect_kind(X: sparse.spmatrix | np.ndarray) -> ExpressionKind:
    """``counts`` (non-negative integers), ``lognorm`` (non-negative floats) or ``scaled``."""
    values: Any = X.data if sparse.issparse(X) else np.asarray(X).ravel()
    if values.size == 0:
        return "counts"
    sample = values[:: max(1, values.size // 200_000)]
    if (sample < 0).any():
        return "scaled"
    if np.allclose(sample, np.round(sample), atol=1e-6):
        return "counts"
    return "lognorm"


@dataclass
class LoadedData:
    """The chosen matrix as an :class:`Expression`, the labels and where they came from.

    ``files`` describes each file when ``data.path`` lists several (batch, path, cells, genes,
    genes kept after the intersection, identifier source); it is empty for one file.
    """

    expression: Expression
    labels: np.ndarray
    obs: Any
    source: str
    notes: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    empty_cells: int = 0
    """Cells without any count in the chosen matrix (:func:`check_empty_cells` judges them)."""


def _candidates(adata: ad.AnnData) -> list[tuple[str, Any, Any]]:
    out = [] if adata.X is None else [("X", adata.X, adata.var)]
    if adata.raw is not None:
        out.append(("raw", adata.raw.X, adata.raw.var))
    out += [(f"layer:{k}", v, adata.var) for k, v in adata.layers.items()]
    return out


# Above this share of cells without any count the data is refused; below it, warned about.
MAX_EMPTY_CELLS = 0.5
# Several files: refuse when fewer genes than this, or than this share of the smallest file's
# genes, are found in every file (a sign of mismatched identifiers or species).
MIN_SHARED_GENES = 200
MIN_SHARED_FRACTION = 0.2
UNKNOWN_LABEL = "unknown"
SYMBOL_COLUMNS = ("gene_symbol", "gene_symbols", "symbol", "gene_name", "feature_name")
ID_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "ensembl_ids", "feature_id")


@dataclass
class _File:
    """One file's chosen matrix and metadata, before several files are combined."""

    name: str
    X: sparse.csr_matrix
    chosen: str
    detected: ExpressionKind
    kind: ExpressionKind
    genes: tuple[str, ...]
    gene_source: str
    var: Any
    library: np.ndarray | None
    labels: np.ndarray
    obs: Any
    notes: list[str]
    empty: int = 0


def load_data(
    cfg: DataConfig, *, seed: int = 0, require_labels: bool = True, where: str | None = None
) -> LoadedData:
    """Load ``cfg.path`` and return expression + labels, or raise :class:`DataError`.

    With ``require_labels=False`` (prediction on unlabeled data) a missing label column yields
    the label ``"unknown"`` for every cell, as does ``data.label_column: null``. ``where`` names
    the source in messages when it is not the recipe's ``data.path`` (``sctune predict`` passes
    ``"query 'cells.h5ad'"``); keys are then reported as "the run's data.<key>".

    ``cfg.path`` may list several files (a list, or a mapping ``{batch name: path}``): see
    :func:`_load_files`.
    """
    files = cfg.files
    if files is not None:
        return _load_files(cfg, files, seed=seed, require_labels=require_labels)
    origin = "data.path" if where is None else where
    # with data.max_cells, open the file backed and read only the drawn cells' rows
    backed = cfg.max_cells is not None and not str(cfg.path).startswith("scanpy:")
    adata = read_adata(cfg.path, where=origin, backed=backed)  # type: ignore[arg-type]
    if getattr(adata, "isbacked", False):
        on_disk = adata
        try:
            if cfg.max_cells is not None and on_disk.n_obs > cfg.max_cells:
                adata = on_disk[_subsample(on_disk.n_obs, cfg.max_cells, seed)].to_memory()
            else:
                adata = on_disk.to_memory()
        finally:
            on_disk.file.close()
    return loaded_from_adata(
        adata,
        cfg,
        name=Path(cfg.path).name,  # type: ignore[arg-type]
        where=where,
        require_labels=require_labels,
        subsample_seed=seed,
    )


def loaded_from_adata(
    adata: ad.AnnData,
    cfg: DataConfig,
    *,
    name: str,
    where: str | None = None,
    require_labels: bool = True,
    subsample_seed: int | None = None,
    check_empty: bool = True,
) -> LoadedData:
    """:func:`load_data` of one AnnData already in memory (e.g. a chunk of a backed file).

    ``check_empty=False`` leaves the judgement of cells without counts to the caller
    (``LoadedData.empty_cells`` counts them): a reader of chunks judges the whole file once.
    """
    origin = "data.path" if where is None else where
    part = _from_adata(
        adata,
        cfg,
        name=name,
        origin=origin,
        where=where,
        require_labels=require_labels,
        subsample_seed=subsample_seed,
        check_empty=check_empty,
    )
    notes = part.notes
    if cfg.label_column is None:
        notes.append(_no_labels_note(part.labels.size))
    expr = Expression(
        X=part.X,
        genes=part.genes,
        kind=part.kind,
        library_size=part.library if part.kind == "counts" else None,
        cell_ids=tuple(map(str, part.obs.index)),
        gene_symbols=_first_column(part.var, SYMBOL_COLUMNS),
        gene_ids=_first_column(part.var, ID_COLUMNS),
    )
    return LoadedData(expr, part.labels, part.obs, part.chosen, notes, empty_cells=part.empty)


def _subsample(n: int, k: int, seed: int) -> np.ndarray:
    """The sorted rows ``data.max_cells`` keeps (the same draw for in-memory and backed files)."""
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _no_labels_note(n: int) -> str:
    return (
        f"data.label_column is null: all {n:,} cells are labelled '{UNKNOWN_LABEL}', so the "
        "task gets no labels (a classifier refuses this; set data.label_column to the "
        "adata.obs column with the cell types)"
    )


def _from_adata(
    adata: ad.AnnData,
    cfg: DataConfig,
    *,
    name: str,
    origin: str,
    where: str | None,
    require_labels: bool,
    subsample_seed: int | None,
    check_empty: bool = True,
) -> _File:
    """One file: checks, matrix choice, kind, identifiers, library sizes and labels."""

    def key(k: str) -> str:
        return f"data.{k}" if where is None else f"{where} (the run's data.{k})"

    if adata.n_obs == 0 or adata.n_vars == 0:
        missing = "cells (adata.n_obs is 0)" if adata.n_obs == 0 else "genes (adata.n_vars is 0)"
        raise DataError(
            f"{origin}: '{name}' has no {missing}; "
            + (
                "there is nothing to annotate"
                if not require_labels
                else "there is nothing to train on"
            ),
            hint="check that the file was written after filtering, not before",
        )
    label_column = cfg.label_column
    if label_column is not None and label_column not in adata.obs.columns:
        if not require_labels:
            label_column = None
        else:
            raise DataError(
                f"{key('label_column')}: column '{label_column}' not found in adata.obs of "
                f"'{name}'{did_you_mean(label_column, adata.obs.columns)}\n"
                f"  available columns: {', '.join(map(str, adata.obs.columns)) or '(none)'}",
                hint="set data.label_column to the column with the cell types, or to null "
                "to load the cells without labels",
            )
    if subsample_seed is not None and cfg.max_cells is not None and adata.n_obs > cfg.max_cells:
        adata = adata[_subsample(adata.n_obs, cfg.max_cells, subsample_seed)].copy()
    cands = _candidates(adata)
    by_name = {c[0]: c for c in cands}
    if not cands:
        raise DataError(
            f"{origin}: '{name}' holds no expression matrix: X is None and there is no .raw or "
            "layer",
            hint="write the counts into adata.X (or a layer such as adata.layers['counts'])",
        )
    notes = []
    if cfg.source == "auto":
        kinds = {n: detect_kind(m) for n, m, _ in cands}
        order = [n for n in by_name if kinds[n] == "counts"] + [
            n for n in by_name if kinds[n] == "lognorm"
        ]
        chosen = order[0] if order else cands[0][0]
        if chosen != "X":
            x_kind = f"X holds {kinds['X']} values" if "X" in kinds else "X is None"
            notes.append(f"using {chosen} ({kinds[chosen]}); {x_kind}")
    elif cfg.source in by_name:
        chosen = cfg.source
    else:
        empty_x = " (X is None in this file)" if cfg.source == "X" and adata.X is None else ""
        if where is None:
            hint = "set data.source to one of the available matrices (auto prefers counts)"
        else:  # sctune predict: the query must offer the matrix the run was trained on
            target = {
                "X": "adata.X = <the matrix>",
                "raw": "adata.raw = ad.AnnData(X=<the matrix>, var=adata.var)",
            }.get(
                cfg.source, f"adata.layers['{cfg.source.removeprefix('layer:')}'] = <the matrix>"
            )
            hint = (
                f"the run read its cells from {cfg.source}; put the query's matrix of the same "
                f"kind there (e.g. {target}; adata.write_h5ad(...)) and rerun"
            )
        raise DataError(
            f"{key('source')}: '{cfg.source}' is not in '{name}'{empty_x}"
            f"{did_you_mean(cfg.source, by_name)}\n"
            f"  available: auto, {', '.join(by_name)}",
            hint=hint,
        )
    _, matrix, var = by_name[chosen]
    X = sparse.csr_matrix(matrix, dtype=np.float32)
    _check_finite(X, chosen, name, key("source"), adata.obs_names)
    detected = detect_kind(X)
    kind: ExpressionKind = detected if cfg.kind == "auto" else cfg.kind
    if (
        cfg.kind != "auto"
        and detected != cfg.kind
        and not (cfg.kind == "lognorm" and detected == "counts")
    ):
        found = {
            "lognorm": "non-integer values: it looks log-normalised",
            "scaled": "negative values: it looks scaled (z-scores)",
        }[detected]
        available = ", ".join(f"{n} ({detect_kind(m)})" for n, m, _ in cands)
        raise DataError(
            f"{key('kind')}: '{cfg.kind}' was set, but {chosen} of '{name}' holds {found}\n"
            f"  matrices in the file: {available}",
            hint="point data.source at raw counts (e.g. layer:counts or raw), or set "
            "data.kind: auto",
        )
    if kind == "lognorm" and cfg.kind == "auto":
        top = float(X.data.max()) if X.nnz else 0.0
        notes.append(
            f"{chosen} looks log-normalised, not counts (max {top:.1f}, non-integer); backbones that "
            "need counts (Geneformer) refuse it, the others bin or rank the normalised values"
        )
    elif kind == "scaled":
        notes.append(
            f"{chosen} holds scaled values (negatives); no built-in backbone can use them: set "
            "data.source to a layer or .raw with counts"
        )
    empty = int((np.asarray(abs(X).sum(axis=1)).ravel() == 0).sum()) if kind != "scaled" else 0
    if check_empty:
        check_empty_cells(empty, X.shape[0], chosen=chosen, name=name, origin=origin)
    if cfg.gene_column is None:
        genes, gene_source = tuple(map(str, var.index)), "var_names"
    elif cfg.gene_column in var.columns:
        genes = tuple(map(str, var[cfg.gene_column]))
        gene_source = f"var['{cfg.gene_column}']"
    else:
        columns = quoted(map(str, var.columns)) or "(none)"
        column_hint = None
        if where is None:
            listed = f"{columns}; null uses var_names"
        else:  # sctune predict: the run's genes are read from that column of the query
            listed = columns
            column_hint = (
                f"the run read its genes from var['{cfg.gene_column}']; add that column to the "
                f"query (e.g. adata.var['{cfg.gene_column}'] = adata.var_names when var_names "
                "hold the same identifiers; adata.write_h5ad(...)) and rerun"
            )
        raise DataError(
            f"{key('gene_column')}: column '{cfg.gene_column}' not found in adata.var of '{name}'"
            f"{did_you_mean(cfg.gene_column, var.columns)}\n"
            f"  available columns: {listed}",
            hint=column_hint,
        )
    library = None
    if "n_counts" in adata.obs.columns and detected == "counts":
        library = adata.obs["n_counts"].to_numpy(dtype=np.float64)
    elif detected == "counts":
        library = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    labels = _labels_of(adata.obs, label_column, name, require_labels=require_labels)
    return _File(
        name=name,
        X=X,
        chosen=chosen,
        detected=detected,
        kind=kind,
        genes=genes,
        gene_source=gene_source,
        var=var,
        library=library,
        labels=labels,
        obs=adata.obs,
        notes=notes,
        empty=empty,
    )


def check_empty_cells(empty: int, total: int, *, chosen: str, name: str, origin: str) -> None:
    """Warn about ``empty`` of ``total`` cells without counts; refuse above
    :data:`MAX_EMPTY_CELLS`. Chunked readers (``data.stream``, ``sctune predict``) call it once
    with the whole file's numbers, so the verdict does not depend on the chunk size."""
    import warnings

    from sctune.core.errors import SctuneWarning

    if not empty:
        return
    share = empty / total
    text = f"{empty:,} of {total:,} cells ({share:.0%}) have no counts in {chosen} of '{name}'"
    tip = "filter them first, e.g. sc.pp.filter_cells(adata, min_counts=1)"
    if share > MAX_EMPTY_CELLS:
        raise DataError(
            f"{origin}: {text}; they carry no information",
            hint=f"{tip}, or point data.source at the matrix with the counts",
        )
    warnings.warn(f"{text}; they are embedded from no genes ({tip})", SctuneWarning, 3)


# --------------------------------------------------------------------------- several files


def _load_files(
    cfg: DataConfig, files: list[tuple[str, str]], *, seed: int, require_labels: bool
) -> LoadedData:
    """Several files: read each, map genes to one namespace, intersect, concatenate.

    - Each cell gets its file's batch name in ``obs[cfg.batch_key]``; a file that already has
      that column is refused. Cell ids that collide across files get a ``<batch>:`` prefix.
    - Each file's matrix is chosen as for one file (``data.source``, ``data.kind``); files of
      different kinds are refused unless ``data.kind: lognorm`` (count files are then
      log-normalised as ``log1p(counts / library size * 1e4)``).
    - Genes: see :func:`_map_genes`; only the genes found in every file are kept.
    - Library sizes are each file's own (``obs['n_counts']`` or the row sums over all its genes),
      so normalising backbones see the full library, not the shared genes only.
    """
    import pandas as pd

    from sctune.core.paths import is_name

    mapping = isinstance(cfg.path, dict)
    origins = [f"data.path.{b if mapping else i}" for i, (b, _) in enumerate(files)]
    names = [p if is_name(p) else Path(p).name for _, p in files]
    adatas = [read_adata(p, where=o) for (_, p), o in zip(files, origins, strict=True)]
    shown = [f"'{n}' ({o})" for n, o in zip(names, origins, strict=True)]
    clash = [s for s, a in zip(shown, adatas, strict=True) if cfg.batch_key in a.obs.columns]
    if clash:
        raise DataError(
            f"data.batch_key: adata.obs of {', '.join(clash)} already has a column "
            f"'{cfg.batch_key}'; with several files sctune writes each file's batch name into "
            "that column, and would overwrite it",
            hint=f"set data.batch_key to a free column name (e.g. data.batch_key: "
            f"sctune_{cfg.batch_key}), or rename that column in the file",
        )
    if cfg.label_column is not None and require_labels:
        missing = [s for s, a in zip(shown, adatas, strict=True) if cfg.label_column not in a.obs]
        if missing and len(missing) < len(adatas):
            raise DataError(
                f"data.label_column: column '{cfg.label_column}' is missing from adata.obs of "
                f"{len(missing)} of {len(adatas)} files: {', '.join(missing)}; every file needs "
                "its cells' labels",
                hint="add the label column to those files (the same name in every file), or "
                "set data.label_column: null to load the cells without labels",
            )
    parts = [
        _from_adata(
            a,
            cfg,
            name=n,
            origin=o,
            where=None,
            require_labels=require_labels,
            subsample_seed=None,
        )
        for a, n, o in zip(adatas, names, origins, strict=True)
    ]
    del adatas
    batches = [b for b, _ in files]
    notes = [
        f"{len(files)} files, batch names in obs['{cfg.batch_key}']: "
        + ", ".join(f"{b} {p.X.shape[0]:,} cells" for b, p in zip(batches, parts, strict=True))
    ]
    for b, p in zip(batches, parts, strict=True):  # a note every file shares is said once
        notes += [
            f"{b} ('{p.name}'): {n}" for n in p.notes if not all(n in q.notes for q in parts)
        ]
    notes += [f"every file: {n}" for n in parts[0].notes if all(n in q.notes for q in parts)]
    kind = _common_kind(cfg, parts, batches)
    shared, columns, alternates, gene_notes, kept = _map_genes(parts, batches, names)
    notes += gene_notes
    blocks = []
    for p, cols in zip(parts, columns, strict=True):
        X = p.X @ cols if sparse.issparse(cols) else p.X[:, cols]
        X = sparse.csr_matrix(X, dtype=np.float32)
        if kind == "lognorm" and p.detected == "counts":
            lib = p.library if p.library is not None else np.asarray(p.X.sum(axis=1)).ravel()
            X = sparse.csr_matrix(sparse.diags(1e4 / np.maximum(lib, 1.0)) @ X, dtype=np.float32)
            X.data = np.log1p(X.data)
        blocks.append(X)
    if kind == "lognorm" and any(p.detected == "counts" for p in parts):
        counted = [f"'{p.name}'" for p in parts if p.detected == "counts"]
        notes.append(
            f"data.kind is lognorm: the counts of {', '.join(counted)} were log-normalised as "
            "log1p(counts / library size * 1e4) to match the other files"
        )
    X = sparse.vstack(blocks, format="csr", dtype=np.float32)
    cell_ids = [str(c) for p in parts for c in p.obs.index]
    owner: dict[str, str] = {}
    collide = sorted(
        {
            c
            for b, p in zip(batches, parts, strict=True)
            for c in map(str, p.obs.index)
            if owner.setdefault(c, b) != b
        }
    )
    if collide:  # ids repeated inside one file stay as they are, as for a single file
        cell_ids = [f"{b}:{c}" for b, p in zip(batches, parts, strict=True) for c in p.obs.index]
        notes.append(
            f"{len(collide):,} cell ids occur in more than one file (e.g. '{collide[0]}'); every "
            f"cell id was prefixed with its batch name ('{batches[0]}:{parts[0].obs.index[0]}')"
        )
    obs = pd.concat([p.obs for p in parts], join="outer", ignore_index=True)
    obs.index = pd.Index(cell_ids)
    obs[cfg.batch_key] = pd.Categorical(
        np.repeat(batches, [p.X.shape[0] for p in parts]), categories=batches
    )
    labels = np.concatenate([p.labels for p in parts]).astype(str)
    library = (
        np.concatenate([p.library for p in parts])
        if kind == "counts" and all(p.library is not None for p in parts)
        else None
    )
    if cfg.max_cells is not None and X.shape[0] > cfg.max_cells:
        idx = np.sort(np.random.default_rng(seed).choice(X.shape[0], cfg.max_cells, replace=False))
        X, labels, obs = X[idx], labels[idx], obs.iloc[idx]
        library = None if library is None else library[idx]
        cell_ids = [cell_ids[i] for i in idx]
    if cfg.label_column is None:
        notes.append(_no_labels_note(len(labels)))
    elif require_labels:  # across files too: 'B cell' in one, 'B Cell ' in another
        _warn_near_duplicate_labels(np.unique(labels), cfg.label_column, f"{len(files)} files")
    symbols, ids = alternates
    expr = Expression(
        X=X,
        genes=shared,
        kind=kind,
        library_size=library,
        cell_ids=tuple(cell_ids),
        gene_symbols=symbols,
        gene_ids=ids,
    )
    chosen = {p.chosen for p in parts}
    source = (
        next(iter(chosen))
        if len(chosen) == 1
        else ", ".join(f"{b}: {p.chosen}" for b, p in zip(batches, parts, strict=True))
    )
    report = [
        {
            "batch": b,
            "path": path,
            "cells": p.X.shape[0],
            "genes": p.X.shape[1],
            "genes_kept": k,
            "matrix": p.chosen,
            "kind": p.detected,
        }
        for (b, path), p, k in zip(files, parts, kept, strict=True)
    ]
    return LoadedData(expr, labels, obs, source, notes, report)


def _common_kind(cfg: DataConfig, parts: list[_File], batches: list[str]) -> ExpressionKind:
    """The one kind of values of the concatenated cells, or a refusal naming each file's kind."""
    detected = {p.detected for p in parts}
    if len(detected) == 1:
        return parts[0].kind
    if cfg.kind == "lognorm" and detected <= {"counts", "lognorm"}:
        return "lognorm"
    label = {"counts": "raw counts", "lognorm": "log-normalised values", "scaled": "scaled values"}
    listed = ", ".join(
        f"{b} ('{p.name}', {p.chosen}): {label[p.detected]}"
        for b, p in zip(batches, parts, strict=True)
    )
    raise DataError(
        f"data.path: the files hold different kinds of values ({listed}); the cells of one run "
        "must share one kind",
        hint="pick the same kind in every file with data.source (e.g. raw or layer:counts for "
        "counts), or set data.kind: lognorm to log-normalise the count files "
        "(log1p(counts / library size * 1e4))",
    )


def _bad_identifier(g: str) -> bool:
    return not g.strip() or g.lower() in ("nan", "none", "na", "<na>")


def _map_genes(
    parts: list[_File], batches: list[str], names: list[str]
) -> tuple[
    tuple[str, ...],
    list[Any],
    tuple[tuple[str, ...] | None, tuple[str, ...] | None],
    list[str],
    list[int],
]:
    """Map every file's genes to one namespace, merge duplicates, intersect.

    The namespace: the files' own identifiers (``data.gene_column`` or ``var_names``) when all
    are of one kind (symbols, or Ensembl ids as :func:`looks_like_ensembl` tells); otherwise
    symbols when every file offers them (as identifiers or in a symbol column such as
    ``var['gene_symbol']``), else Ensembl ids when every file offers them (identifiers or an id
    column such as ``var['gene_ids']``). Identifiers that occur twice in a file after mapping are
    merged: counts summed, log-normalised values from the first column. Returns the shared
    genes (in the first file's order), per file a column selector (index array, or a sparse
    genes x shared matrix summing duplicates), the alternate symbols / ids of the shared genes
    when every file has them, the notes and the per-file number of genes kept.
    """
    kinds = ["ensembl" if looks_like_ensembl(p.genes) else "symbol" for p in parts]

    def offer(p: _File, own: str, want: str, cols: tuple[str, ...]) -> tuple[str, Any] | None:
        if own == want:
            return p.gene_source, p.genes
        found = _named_column(p.var, cols)
        if found is None or (want == "ensembl") != looks_like_ensembl(found[1]):
            return None
        return f"var['{found[0]}']", found[1]

    def offers(want: str) -> list[tuple[str, Any] | None]:
        cols = SYMBOL_COLUMNS if want == "symbol" else ID_COLUMNS
        return [offer(p, k, want, cols) for p, k in zip(parts, kinds, strict=True)]

    if len(set(kinds)) == 1:
        namespace = kinds[0]
        chosen: list[Any] = [(p.gene_source, p.genes) for p in parts]
    else:
        by_symbol, by_id = offers("symbol"), offers("ensembl")
        if all(by_symbol):
            namespace, chosen = "symbol", by_symbol
        elif all(by_id):
            namespace, chosen = "ensembl", by_id
        else:
            listed = ", ".join(
                f"'{n}' {'Ensembl ids' if k == 'ensembl' else 'symbols'} ({p.gene_source}"
                + (", no symbol column" if k == "ensembl" and not s else "")
                + (", no Ensembl id column" if k == "symbol" and not i else "")
                + ")"
                for n, k, p, s, i in zip(names, kinds, parts, by_symbol, by_id, strict=True)
            )
            raise DataError(
                f"data.path: the files name their genes differently and cannot be mapped to "
                f"one namespace: {listed}",
                hint="add the gene symbols to the Ensembl files (adata.var['gene_symbol']) or "
                "the Ensembl ids to the symbol files (adata.var['gene_ids']), or pick a var "
                "column of one kind in every file with data.gene_column",
            )
    alt_kind = "ensembl" if namespace == "symbol" else "symbol"
    alt_cols = ID_COLUMNS if alt_kind == "ensembl" else SYMBOL_COLUMNS
    alts = [offer(p, k, alt_kind, alt_cols) for p, k in zip(parts, kinds, strict=True)]
    word = "symbols" if namespace == "symbol" else "Ensembl ids"
    notes: list[str] = []
    merged: list[tuple[list[str], Any, dict[str, str]]] = []  # unique ids, selector, alternates
    for p, b, (src, ids), alt in zip(parts, batches, chosen, alts, strict=True):
        ids = [str(g) for g in ids]
        good = [j for j, g in enumerate(ids) if not _bad_identifier(g)]
        if len(good) < len(ids):
            notes.append(
                f"{b}: {_count(len(ids) - len(good), 'gene')} without {word[:-1]} in {src} dropped"
            )
        first: dict[str, int] = {}
        for j in good:
            first.setdefault(ids[j], j)
        unique = list(first)
        alt_of = {g: str(alt[1][j]) for g, j in first.items()} if alt else {}
        if len(first) < len(good):
            dup = sorted({ids[j] for j in good if first[ids[j]] != j})
            if p.detected == "counts":
                pos = {g: k for k, g in enumerate(unique)}
                rows = np.array(good)
                sel = sparse.csr_matrix(
                    (np.ones(len(rows), np.float32), (rows, [pos[ids[j]] for j in good])),
                    shape=(len(ids), len(unique)),
                )
                how = "their counts were summed"
            else:
                sel = np.array([first[g] for g in unique])
                how = f"the first column of each was kept ({p.detected} values are not summed)"
            notes.append(
                f"{b}: {_count(len(dup), word[:-1])} occur more than once in {src} "
                f"(e.g. {', '.join(repr(g) for g in dup[:3])}); {how}"
            )
        else:
            sel = np.array([first[g] for g in unique])
        merged.append((unique, sel, alt_of))
    common = set(merged[0][0])
    for unique, _, _ in merged[1:]:
        common &= set(unique)
    shared = tuple(g for g in merged[0][0] if g in common)
    sizes = [len(u) for u, _, _ in merged]
    if len(shared) < MIN_SHARED_GENES or len(shared) < MIN_SHARED_FRACTION * min(sizes):
        listed = ", ".join(
            f"'{n}' {s:,} (e.g. {', '.join(repr(g) for g in u[:3])}; {src})"
            for n, s, (u, _, _), (src, _) in zip(names, sizes, merged, chosen, strict=True)
        )
        raise DataError(
            f"data.path: only {_count(len(shared), 'gene')} ({word}) are found in every file; "
            f"a run needs at least {MIN_SHARED_GENES} and {MIN_SHARED_FRACTION:.0%} of the "
            f"smallest file's genes\n  genes per file: {listed}",
            hint="check that the files come from the same species and gene annotation; "
            "data.gene_column picks the var column with the identifiers in every file; or "
            "drop the file that shares few genes",
        )
    columns = []
    for unique, sel, _ in merged:
        pos = {g: k for k, g in enumerate(unique)}
        take = np.array([pos[g] for g in shared])
        columns.append(sel[:, take] if sparse.issparse(sel) else sel[take])
    alternates: list[tuple[str, ...] | None] = [None, None]
    maps = [a for _, _, a in merged if a]
    if maps:
        alt_ids = [
            next((m[g] for m in maps if g in m and not _bad_identifier(m[g])), None)
            for g in shared
        ]
        if all(a is not None for a in alt_ids):
            alternates[0 if alt_kind == "symbol" else 1] = tuple(str(a) for a in alt_ids)
    sources = ", ".join(f"{b}: {src}" for b, (src, _) in zip(batches, chosen, strict=True))
    kept = [len(shared)] * len(parts)
    notes.append(
        f"genes as {word} ({sources}); kept the {len(shared):,} found in every file: "
        + ", ".join(
            f"{b} {len(shared):,} of {p.X.shape[1]:,} ({len(shared) / p.X.shape[1]:.0%})"
            for b, p in zip(batches, parts, strict=True)
        )
    )
    return shared, columns, (alternates[0], alternates[1]), notes, kept


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _examples(names: Any, mask: np.ndarray) -> str:
    shown = [str(names[i]) for i in np.flatnonzero(mask)[:3]]
    return ", ".join(f"'{c}'" for c in shown)


def _check_finite(X: sparse.csr_matrix, chosen: str, name: str, key: str, cells: Any) -> None:
    """Refuse NaN or infinite values (training on them silently yields chance accuracy)."""
    bad = ~np.isfinite(X.data)
    if not bad.any():
        return
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[bad]
    per_cell = np.zeros(X.shape[0], dtype=bool)
    per_cell[rows] = True
    n_nan = int(np.isnan(X.data).sum())
    found = " and ".join(
        _count(n, what)
        for n, what in ((n_nan, "NaN value"), (int(bad.sum()) - n_nan, "infinite value"))
        if n
    )
    raise DataError(
        f"{key}: {chosen} of '{name}' holds {found} in {_count(int(per_cell.sum()), 'cell')} "
        f"(e.g. {_examples(cells, per_cell)}); sctune needs finite expression values",
        hint="fix or drop those cells before training, or point data.source at another matrix",
    )


def _labels_of(obs: Any, label_column: str | None, name: str, *, require_labels: bool) -> Any:
    """Each cell's label as a string (``'unknown'`` without a label column); with
    ``require_labels`` missing or blank labels are refused."""
    if label_column is None:
        return np.full(len(obs), UNKNOWN_LABEL, dtype=object).astype(str)
    column = obs[label_column]
    if require_labels:
        _check_labels(column, label_column, name, obs.index)
    return column.astype(str).to_numpy()


def _check_labels(labels: Any, column: str, name: str, cells: Any) -> None:
    """Refuse missing or empty labels (they would become a class of their own)."""
    missing = labels.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"data.label_column: '{column}' has {_count(int(missing.sum()), 'missing label')} "
            f"in '{name}' (e.g. cells {_examples(cells, missing)})",
            hint="drop unlabeled cells before training, or fill them with a label",
        )
    blank = labels.astype(str).str.strip().eq("").to_numpy()
    if blank.any():
        raise DataError(
            f"data.label_column: '{column}' has {_count(int(blank.sum()), 'empty label')} ('' or "
            f"only spaces) in '{name}' (e.g. cells {_examples(cells, blank)})",
            hint="drop unlabeled cells before training, or fill them with a label",
        )
    _warn_near_duplicate_labels(labels.astype(str).unique(), column, name)


def _warn_near_duplicate_labels(values: Any, column: str, name: str) -> None:
    """Warn when labels differ only by surrounding spaces or letter case ('B cell' and
    'B cell '): each would silently become a class of its own."""
    import warnings

    from sctune.core.errors import SctuneWarning

    groups: dict[str, list[str]] = {}
    for v in map(str, values):
        groups.setdefault(" ".join(v.split()).casefold(), []).append(v)
    clashes = [sorted(g) for g in groups.values() if len(g) > 1]
    if clashes:
        shown = "; ".join(" vs ".join(repr(v) for v in g) for g in clashes[:3])
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        warnings.warn(
            f"data.label_column: '{column}' in '{name}' has labels that differ only by spaces "
            f"or letter case, which stay separate classes: {shown}{more}; clean them first, "
            "e.g. adata.obs[col] = adata.obs[col].astype(str).str.split().str.join(' ') and one "
            "spelling per class",
            SctuneWarning,
            3,
        )


def _first_column(var: Any, names: tuple[str, ...]) -> tuple[str, ...] | None:
    found = _named_column(var, names)
    return None if found is None else found[1]


def _named_column(var: Any, names: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    """The first of ``names`` that is a column of ``var``, with its values as strings."""
    for n in names:
        if n in var.columns:
            return n, tuple(map(str, var[n]))
    return None


# --------------------------------------------------------------------------- splits


def split_cells(
    obs: Any, labels: np.ndarray, cfg: SplitConfig, *, seed: int
) -> dict[str, np.ndarray]:
    """Return ``{"train"|"valid"|"test": sorted row indices}`` as configured.

    Raises :class:`DataError` when the training part comes out empty.
    """
    split = _split(obs, labels, cfg, seed=seed)
    if len(split["train"]) == 0:
        how = f"the split file '{cfg.file}'" if cfg.file else f"split.method '{cfg.method}'"
        raise DataError(
            f"data.split: {how} puts no cells in the training part "
            f"({', '.join(f'{s} {len(split[s])}' for s in SPLITS)} cells)",
            hint="give the training part cells (lower split.valid/test, or fix the split "
            "column or file)",
        )
    return split


def _split(obs: Any, labels: np.ndarray, cfg: SplitConfig, *, seed: int) -> dict[str, np.ndarray]:
    n = len(labels)
    rng = np.random.default_rng(seed)
    if cfg.file:
        return read_split(Path(cfg.file), list(map(str, obs.index)))
    if cfg.method == "column":
        if not cfg.column or cfg.column not in obs.columns:
            raise DataError(
                f"data.split.column: column '{cfg.column}' not found in adata.obs"
                f"{did_you_mean(str(cfg.column), obs.columns)}"
            )
        values = obs[cfg.column].astype(str).str.lower().to_numpy()
        alias = {
            "train": "train",
            "training": "train",
            "valid": "valid",
            "val": "valid",
            "validation": "valid",
            "test": "test",
            "testing": "test",
        }
        unknown = sorted(set(values) - set(alias))
        if unknown:
            raise DataError(
                f"data.split.column: column '{cfg.column}' has values {unknown[:5]}; allowed: "
                "train, valid (val, validation), test"
            )
        mapped = np.array([alias[v] for v in values])
        out: dict[str, Any] = {s: np.flatnonzero(mapped == s) for s in SPLITS}
        if len(out["valid"]) == 0:
            out = _carve_valid(out, labels, cfg.valid or 0.1, rng)
        return out
    if cfg.method == "group":
        return _group_split(obs, cfg, rng)
    # stratified: per class, shuffle and cut (every class keeps >= 1 training cell)
    out = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * cfg.test))
        n_valid = int(round(len(idx) * cfg.valid))
        if len(idx) - n_test - n_valid < 1:
            n_test, n_valid = max(0, min(n_test, len(idx) - 1)), 0
        out["test"] += idx[:n_test].tolist()
        out["valid"] += idx[n_test : n_test + n_valid].tolist()
        out["train"] += idx[n_test + n_valid :].tolist()
    del n
    return {s: np.sort(np.array(v, dtype=np.int64)) for s, v in out.items()}


def _carve_valid(
    out: dict[str, np.ndarray], labels: np.ndarray, frac: float, rng: Any
) -> dict[str, np.ndarray]:
    train = rng.permutation(out["train"])
    k = max(1, int(round(len(train) * frac)))
    return {"train": np.sort(train[k:]), "valid": np.sort(train[:k]), "test": out["test"]}


def _group_split(obs: Any, cfg: SplitConfig, rng: Any) -> dict[str, np.ndarray]:
    col = cfg.group_column
    if not col or col not in obs.columns:
        raise DataError(
            f"data.split.group_column: column '{col}' not found in adata.obs"
            f"{did_you_mean(str(col), obs.columns)}\n  available columns: {', '.join(map(str, obs.columns))}"
        )
    groups = obs[col].astype(str).to_numpy()
    names = rng.permutation(np.unique(groups))
    if len(names) < 3:
        raise DataError(
            f"data.split.group_column: '{col}' has {_count(len(names), 'group')} ("
            + ", ".join(f"'{g}'" for g in sorted(names)[:5])
            + "); a group split needs at least 3 (test groups, one validation group, "
            "training groups)",
            hint="use split.method: stratified, or a column with more donors/batches",
        )
    sizes = {g: int((groups == g).sum()) for g in names}
    test: list[Any] = []
    total = 0
    for g in names:
        if total >= cfg.test * len(groups) and test:
            break
        test.append(g)
        total += sizes[g]
    rest = [g for g in names if g not in test]
    if len(rest) < 2:
        test, rest = test[:-1], [test[-1], *rest]
    valid = [rest[0]]  # one training donor held out for validation, as in scPEFT
    out = {
        "test": np.flatnonzero(np.isin(groups, test)),
        "valid": np.flatnonzero(np.isin(groups, valid)),
        "train": np.flatnonzero(np.isin(groups, rest[1:])),
    }
    return out


def write_split(
    path: Path, cell_ids: list[str], split: dict[str, np.ndarray], **meta: Any
) -> None:
    payload = {**meta, **{s: [cell_ids[i] for i in split[s]] for s in SPLITS}}
    path.write_text(json.dumps(payload, indent=1))


def read_split(path: Path, cell_ids: list[str]) -> dict[str, np.ndarray]:
    """Read a saved split (cell ids per part) and map it onto the current rows."""
    where = "data.split.file"
    if path.is_dir():
        raise DataError(f"{where}: '{path}' is a directory; give a run's split.json")
    if not path.is_file():
        raise DataError(f"{where}: '{path}' does not exist", hint="point it at a run's split.json")
    try:
        payload = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{where}: '{path}' is not valid JSON ({exc})",
            hint="point it at a split.json written by 'sctune run'",
        ) from None
    if not isinstance(payload, dict):
        raise DataError(
            f"{where}: '{path}' holds a JSON {type(payload).__name__}; expected an object with "
            "'train', 'valid' and 'test' lists of cell ids",
            hint="point it at a split.json written by 'sctune run'",
        )
    problems = []
    for s in SPLITS:
        ids = payload.get(s)
        if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
            odd = (
                ids
                if not isinstance(ids, list)
                else next(c for c in ids if not isinstance(c, str))
            )
            got = "missing" if ids is None else f"{type(odd).__name__} {odd!r}"
            problems.append(f"'{s}' must be a list of cell ids (strings); found {got}")
    if problems:
        raise DataError(
            f"{where}: '{path}' is not a split file\n  " + "\n  ".join(problems),
            hint="point it at a split.json written by 'sctune run'",
        )
    index = {c: i for i, c in enumerate(cell_ids)}
    if len(index) != len(cell_ids):
        raise DataError(
            f"{where}: the data's cell ids (obs_names) are not unique, so a saved split cannot "
            "be mapped onto them",
            hint="make them unique first (adata.obs_names_make_unique()), or split with "
            "split.method instead",
        )
    out = {}
    owner: dict[str, str] = {}
    for s in SPLITS:
        ids = payload[s]
        missing = [c for c in ids if c not in index]
        if missing:
            raise DataError(
                f"{where}: {len(missing)} '{s}' cells of '{path}' are not in the data "
                f"(e.g. {', '.join(missing[:3])})",
                hint="the split belongs to another dataset, or data.max_cells subsampled the cells",
            )
        twice = [c for c in ids if owner.setdefault(c, s) != s]
        if twice or len(set(ids)) != len(ids):
            example = twice[0] if twice else next(c for c in ids if ids.count(c) > 1)
            raise DataError(
                f"{where}: cell '{example}' appears more than once in '{path}' "
                f"({', '.join(sorted({owner[example], s}))}); each cell belongs to one part",
                hint="point it at a split.json written by 'sctune run'",
            )
        out[s] = np.sort(np.array([index[c] for c in ids], dtype=np.int64))
    return out
