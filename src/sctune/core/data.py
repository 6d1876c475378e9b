"""Data in: AnnData loading, matrix choice, counts detection, splits and the preflight report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from sctune.core.cells import Expression, ExpressionKind
from sctune.core.errors import DataError, did_you_mean, quoted

if TYPE_CHECKING:
    import anndata as ad

    from sctune.core.recipe import DataConfig, SplitConfig

# name -> label column; '_counts' rebuilds the integer counts from scanpy's .raw (see below)
BUILTIN_DATASETS = {
    "scanpy:pbmc68k_reduced": "bulk_labels",
    "scanpy:pbmc68k_reduced_counts": "bulk_labels",
}
SPLITS = ("train", "valid", "test")


def read_adata(path: str, *, where: str = "data.path") -> ad.AnnData:
    """Read an ``.h5ad`` file or a built-in dataset name (``scanpy:pbmc68k_reduced``).

    ``where`` names the source in error messages: the recipe key ``data.path``, or e.g.
    ``query`` for the file given to ``sctune predict``.
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
        return adata
    file = Path(path)
    if where == "data.path":
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

    try:
        return ad.read_h5ad(file)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"{where}: '{path}' could not be read as h5ad ({type(exc).__name__}: {first})",
            hint="sctune reads AnnData .h5ad files (adata.write_h5ad); the file may be "
            "truncated or in another format",
        ) from exc


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


def detect_kind(X: sparse.spmatrix | np.ndarray) -> ExpressionKind:
    """``counts`` (non-negative integers), ``lognorm`` (non-negative floats) or ``scaled``."""
    values = X.data if sparse.issparse(X) else np.asarray(X).ravel()
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
    """The chosen matrix as an :class:`Expression`, the labels and where they came from."""

    expression: Expression
    labels: np.ndarray
    obs: Any
    source: str
    notes: list[str] = field(default_factory=list)


def _candidates(adata: ad.AnnData) -> list[tuple[str, Any, Any]]:
    out = [] if adata.X is None else [("X", adata.X, adata.var)]
    if adata.raw is not None:
        out.append(("raw", adata.raw.X, adata.raw.var))
    out += [(f"layer:{k}", v, adata.var) for k, v in adata.layers.items()]
    return out


# Above this share of cells without any count the data is refused; below it, warned about.
MAX_EMPTY_CELLS = 0.5


def load_data(
    cfg: DataConfig, *, seed: int = 0, require_labels: bool = True, where: str | None = None
) -> LoadedData:
    """Load ``cfg.path`` and return expression + labels, or raise :class:`DataError`.

    With ``require_labels=False`` (prediction on unlabeled data) a missing label column yields
    the label ``"unknown"`` for every cell. ``where`` names the source in messages when it is
    not the recipe's ``data.path`` (``sctune predict`` passes ``"query 'cells.h5ad'"``); keys
    are then reported as "the run's data.<key>".
    """
    import warnings

    from sctune.core.errors import SctuneWarning

    def key(k: str) -> str:
        return f"data.{k}" if where is None else f"{where} (the run's data.{k})"

    origin = "data.path" if where is None else where
    adata = read_adata(cfg.path, where=origin)
    name = Path(cfg.path).name
    if adata.n_obs == 0 or adata.n_vars == 0:
        empty = "cells (adata.n_obs is 0)" if adata.n_obs == 0 else "genes (adata.n_vars is 0)"
        raise DataError(
            f"{origin}: '{name}' has no {empty}; "
            + (
                "there is nothing to annotate"
                if not require_labels
                else "there is nothing to train on"
            ),
            hint="check that the file was written after filtering, not before",
        )
    if cfg.label_column not in adata.obs.columns and not require_labels:
        adata.obs[cfg.label_column] = "unknown"
    if cfg.label_column not in adata.obs.columns:
        raise DataError(
            f"{key('label_column')}: column '{cfg.label_column}' not found in adata.obs of '{name}'"
            f"{did_you_mean(cfg.label_column, adata.obs.columns)}\n"
            f"  available columns: {', '.join(map(str, adata.obs.columns)) or '(none)'}"
        )
    if cfg.max_cells is not None and adata.n_obs > cfg.max_cells:
        idx = np.sort(
            np.random.default_rng(seed).choice(adata.n_obs, cfg.max_cells, replace=False)
        )
        adata = adata[idx].copy()
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
        raise DataError(
            f"{key('source')}: '{cfg.source}' is not in '{name}'{empty_x}"
            f"{did_you_mean(cfg.source, by_name)}\n"
            f"  available: auto, {', '.join(by_name)}"
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
    if empty:
        share = empty / X.shape[0]
        text = (
            f"{empty:,} of {X.shape[0]:,} cells ({share:.0%}) have no counts in {chosen} of "
            f"'{name}'"
        )
        tip = "filter them first, e.g. sc.pp.filter_cells(adata, min_counts=1)"
        if share > MAX_EMPTY_CELLS:
            raise DataError(
                f"{origin}: {text}; they carry no information",
                hint=f"{tip}, or point data.source at the matrix with the counts",
            )
        warnings.warn(f"{text}; they are embedded from no genes ({tip})", SctuneWarning, 2)
    if cfg.gene_column is None:
        genes = tuple(map(str, var.index))
    elif cfg.gene_column in var.columns:
        genes = tuple(map(str, var[cfg.gene_column]))
    else:
        raise DataError(
            f"{key('gene_column')}: column '{cfg.gene_column}' not found in adata.var of '{name}'"
            f"{did_you_mean(cfg.gene_column, var.columns)}\n"
            f"  available columns: {quoted(map(str, var.columns)) or '(none)'}; null uses var_names"
        )
    symbols = _first_column(
        var, ("gene_symbol", "gene_symbols", "symbol", "gene_name", "feature_name")
    )
    ids = _first_column(var, ("gene_ids", "gene_id", "ensembl_id", "ensembl_ids", "feature_id"))
    library = None
    if "n_counts" in adata.obs.columns and kind == "counts":
        library = adata.obs["n_counts"].to_numpy(dtype=np.float64)
    elif kind == "counts":
        library = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    labels = adata.obs[cfg.label_column]
    if require_labels:
        _check_labels(labels, cfg.label_column, name, adata.obs_names)
    expr = Expression(
        X=X,
        genes=genes,
        kind=kind,
        library_size=library,
        cell_ids=tuple(map(str, adata.obs_names)),
        gene_symbols=symbols,
        gene_ids=ids,
    )
    return LoadedData(expr, labels.astype(str).to_numpy(), adata.obs, chosen, notes)


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


def _first_column(var: Any, names: tuple[str, ...]) -> tuple[str, ...] | None:
    for n in names:
        if n in var.columns:
            return tuple(map(str, var[n]))
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
        out = {s: np.flatnonzero(mapped == s) for s in SPLITS}
        if len(out["valid"]) == 0:
            out = _carve_valid(out, labels, cfg.valid or 0.1, rng)
        return out
    if cfg.method == "group":
        return _group_split(obs, cfg, rng)
    # stratified: per class, shuffle and cut (every class keeps >= 1 training cell)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
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
            f"data.split.group_column: '{col}' has {len(names)} groups; a group split needs at least 3 "
            "(test groups, one validation group, training groups)",
            hint="use split.method: stratified, or a column with more donors/batches",
        )
    sizes = {g: int((groups == g).sum()) for g in names}
    test, total = [], 0
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
