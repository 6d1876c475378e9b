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

BUILTIN_DATASETS = {"scanpy:pbmc68k_reduced": "bulk_labels"}
SPLITS = ("train", "valid", "test")


def read_adata(path: str) -> ad.AnnData:
    """Read an ``.h5ad`` file or a built-in dataset name (``scanpy:pbmc68k_reduced``)."""
    if path.startswith("scanpy:"):
        if path not in BUILTIN_DATASETS:
            raise DataError(
                f"data.path: unknown built-in dataset '{path}'{did_you_mean(path, BUILTIN_DATASETS)}\n"
                f"  built-in datasets: {quoted(BUILTIN_DATASETS)}"
            )
        import scanpy as sc

        adata = sc.datasets.pbmc68k_reduced()
        adata.obs["cell_type"] = adata.obs["bulk_labels"].astype(str)
        return adata
    file = Path(path)
    if not file.is_file():
        raise DataError(
            f"data.path: file '{path}' does not exist (working directory: {Path.cwd()})",
            hint="give an .h5ad path relative to the working directory, or 'scanpy:pbmc68k_reduced'",
        )
    import anndata as ad

    try:
        return ad.read_h5ad(file)
    except Exception as exc:
        raise DataError(
            f"data.path: '{path}' could not be read as h5ad: {type(exc).__name__}: {exc}"
        ) from exc


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
    out = [("X", adata.X, adata.var)]
    if adata.raw is not None:
        out.append(("raw", adata.raw.X, adata.raw.var))
    out += [(f"layer:{k}", v, adata.var) for k, v in adata.layers.items()]
    return out


def load_data(cfg: DataConfig, *, seed: int = 0, require_labels: bool = True) -> LoadedData:
    """Load ``cfg.path`` and return expression + labels, or raise :class:`DataError`.

    With ``require_labels=False`` (prediction on unlabeled data) a missing label column yields
    the label ``"unknown"`` for every cell.
    """
    adata = read_adata(cfg.path)
    name = Path(cfg.path).name
    if cfg.label_column not in adata.obs.columns and not require_labels:
        adata.obs[cfg.label_column] = "unknown"
    if cfg.label_column not in adata.obs.columns:
        raise DataError(
            f"data.label_column: column '{cfg.label_column}' not found in adata.obs of '{name}'"
            f"{did_you_mean(cfg.label_column, adata.obs.columns)}\n"
            f"  available columns: {', '.join(map(str, adata.obs.columns))}"
        )
    if cfg.max_cells is not None and adata.n_obs > cfg.max_cells:
        idx = np.sort(
            np.random.default_rng(seed).choice(adata.n_obs, cfg.max_cells, replace=False)
        )
        adata = adata[idx].copy()
    cands = _candidates(adata)
    by_name = {c[0]: c for c in cands}
    notes = []
    if cfg.source == "auto":
        kinds = {n: detect_kind(m) for n, m, _ in cands}
        order = [n for n in by_name if kinds[n] == "counts"] + [
            n for n in by_name if kinds[n] == "lognorm"
        ]
        chosen = order[0] if order else "X"
        if chosen != "X":
            notes.append(f"using {chosen} ({kinds[chosen]}); X holds {kinds['X']} values")
    elif cfg.source in by_name:
        chosen = cfg.source
    else:
        raise DataError(
            f"data.source: '{cfg.source}' is not in '{name}'{did_you_mean(cfg.source, by_name)}\n"
            f"  available: auto, {', '.join(by_name)}"
        )
    _, matrix, var = by_name[chosen]
    X = sparse.csr_matrix(matrix, dtype=np.float32)
    kind: ExpressionKind = detect_kind(X) if cfg.kind == "auto" else cfg.kind
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
    if cfg.gene_column is None:
        genes = tuple(map(str, var.index))
    elif cfg.gene_column in var.columns:
        genes = tuple(map(str, var[cfg.gene_column]))
    else:
        raise DataError(
            f"data.gene_column: column '{cfg.gene_column}' not found in adata.var of '{name}'"
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
    if labels.isna().any():
        raise DataError(
            f"data.label_column: '{cfg.label_column}' has {int(labels.isna().sum())} missing labels "
            f"in '{name}'",
            hint="drop unlabeled cells before training, or fill them with a label",
        )
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


def _first_column(var: Any, names: tuple[str, ...]) -> tuple[str, ...] | None:
    for n in names:
        if n in var.columns:
            return tuple(map(str, var[n]))
    return None


# --------------------------------------------------------------------------- splits


def split_cells(
    obs: Any, labels: np.ndarray, cfg: SplitConfig, *, seed: int
) -> dict[str, np.ndarray]:
    """Return ``{"train"|"valid"|"test": sorted row indices}`` as configured."""
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
    if not path.is_file():
        raise DataError(
            f"data.split.file: '{path}' does not exist", hint="point it at a run's split.json"
        )
    payload = json.loads(path.read_text())
    index = {c: i for i, c in enumerate(cell_ids)}
    out = {}
    for s in SPLITS:
        ids = payload.get(s, [])
        missing = [c for c in ids if c not in index]
        if missing:
            raise DataError(
                f"data.split.file: {len(missing)} '{s}' cells of '{path}' are not in the data "
                f"(e.g. {', '.join(missing[:3])})",
                hint="the split belongs to another dataset, or data.max_cells subsampled the cells",
            )
        out[s] = np.sort(np.array([index[c] for c in ids], dtype=np.int64))
    return out


# --------------------------------------------------------------------------- preflight


@dataclass
class Preflight:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    def raise_errors(self) -> None:
        if self.errors:
            raise DataError(
                f"preflight found {len(self.errors)} problem{'s' * (len(self.errors) != 1)}\n  "
                + "\n  ".join(self.errors)
            )


def preflight_labels(
    labels: np.ndarray, split: dict[str, np.ndarray], min_cells: int
) -> Preflight:
    """Check class coverage of the split (classes missing from training, tiny classes)."""
    report = Preflight()
    train = set(labels[split["train"]])
    for part in ("valid", "test"):
        missing = sorted(set(labels[split[part]]) - train)
        if missing:
            report.errors.append(
                f"{len(missing)} class(es) in the {part} split have no training cells: "
                + ", ".join(
                    f"'{m}' ({int((labels[split[part]] == m).sum())} cells)" for m in missing[:5]
                )
                + " ; use a stratified split, or drop these cells"
            )
    counts = {c: int((labels[split["train"]] == c).sum()) for c in sorted(train)}
    tiny = {c: n for c, n in counts.items() if n < min_cells}
    if tiny:
        report.warnings.append(
            f"{len(tiny)} class(es) have fewer than {min_cells} training cells: "
            + ", ".join(f"'{c}' ({n})" for c, n in sorted(tiny.items(), key=lambda x: x[1]))
        )
    sizes = ", ".join(f"{s} {len(split[s])}" for s in SPLITS)
    report.info.append(f"split: {sizes} cells; {len(train)} training classes")
    return report
