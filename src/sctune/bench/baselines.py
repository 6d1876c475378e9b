"""Baselines on the grid's own splits, computed by the bench (no sctune run involved).

Cell typing (per dataset and seed):

- ``logreg``: scikit-learn ``LogisticRegression(max_iter=2000)`` on standardised log-normalised
  expression of the top ``n_hvg`` highly variable genes, chosen on the TRAINING cells only
  (scanpy ``highly_variable_genes``, ``seurat`` flavour); counts are normalised to 1e4 and
  log1p-transformed first, log-normalised input is used as is. This is the baseline of Boiarsky
  et al. (2023).
- ``knn_pca``: ``KNeighborsClassifier(k)`` on the first ``n_pcs`` principal components of the
  same standardised HVG matrix, PCA fitted on the training cells.

Batch correction: ``pca`` (uncorrected PCA of the log-normalised training-chosen HVGs of the test
cells, as the batch_correction task computes its reference) and ``harmony`` (harmonypy on that
PCA), scored with the task's scib-metrics set on the same test cells.

Validation cells are not used. Results go to ``baselines/<task>__<dataset>__s<seed>.json`` with
each test cell's prediction, and the embeddings (for the UMAP grid) to a ``.npz`` beside it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sctune.bench.spec import Plan


def baseline_path(root: Path, task: str, dataset: str, seed: int) -> Path:
    return root / "baselines" / f"{task}__{dataset}__s{seed}.json"


def compute_all(root: Path, plan: Plan, *, log: Any = print) -> None:
    """Compute the missing baselines (idempotent: kept when their split file is unchanged)."""
    from sctune.bench.runner import load_dataset, split_file

    spec = plan.spec
    wanted = sorted({(c.task, c.dataset, c.seed) for c in plan.cells})
    cache: dict[tuple[str, int], Any] = {}
    for task, dataset, seed in wanted:
        plugin = plan.tasks[task]
        names: list[str] = list(
            spec.baselines.cell_type if plugin == "cell_type" else spec.baselines.batch_correction
        )
        if plugin not in ("cell_type", "batch_correction") or not names:
            continue
        sfile = split_file(root, dataset, seed)
        digest = hashlib.sha256(sfile.read_bytes()).hexdigest()[:12]
        out = baseline_path(root, task, dataset, seed)
        key = json.dumps({"names": names, "b": spec.baselines.model_dump(), "split": digest})
        try:
            if json.loads(out.read_text()).get("key") == key:
                continue
        except (OSError, ValueError):
            pass
        data = plan.datasets[dataset]
        ck = (dataset, seed if data.get("max_cells") else -1)
        if ck not in cache:
            cache[ck] = load_dataset(data, seed)
        loaded = cache[ck]
        from sctune.core.data import read_split
        from sctune.core.errors import SctuneError

        start = time.perf_counter()
        try:
            split = read_split(sfile, list(loaded.expression.cell_ids))
            if plugin == "cell_type":
                payload, embs = cell_type_baselines(loaded, split, names, spec.baselines, seed)
            else:
                batch_col = str(spec.tasks[task].task.get("batch_column", "batch"))
                payload, embs = batch_baselines(
                    loaded, split, names, spec.baselines, batch_col, seed
                )
        except SctuneError as exc:  # reported; the other baselines and the report go on
            log(f"baselines {task}/{dataset} seed {seed}: FAILED ({exc.message.splitlines()[0]})")
            out.unlink(missing_ok=True)
            continue
        payload.update(key=key, task=task, dataset=dataset, seed=seed, split_sha256=digest)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out.with_suffix(".npz"), **embs)  # type: ignore[arg-type]
        out.write_text(json.dumps(payload, default=_plain))
        log(
            f"baselines {task}/{dataset} seed {seed}: {', '.join(names)} ({time.perf_counter() - start:.1f} s)"
        )


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))


def lognorm_hvg(loaded: Any, train: np.ndarray, n_hvg: int) -> tuple[np.ndarray, list[str]]:
    """Log-normalised expression (all cells) of the top HVGs chosen on the training cells."""
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    expr = loaded.expression
    if expr.kind not in ("counts", "lognorm"):
        from sctune.core.errors import DataError

        raise DataError(f"baselines need counts or log-normalised data, got '{expr.kind}' values")
    adata = ad.AnnData(X=sparse.csr_matrix(expr.X, dtype=np.float32))
    adata.var_names = [str(g) for g in expr.genes]
    adata.var_names_make_unique()
    if expr.kind == "counts":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    n_top = min(n_hvg, adata.n_vars)
    keep = np.ones(adata.n_vars, dtype=bool)
    if n_top < adata.n_vars:
        tr = adata[train].copy()
        sc.pp.highly_variable_genes(tr, n_top_genes=n_top, flavor="seurat")
        keep = tr.var["highly_variable"].to_numpy()
    X = adata.X[:, keep]
    return np.asarray(X.toarray(), dtype=np.float32), list(adata.var_names[keep])


def cell_type_baselines(
    loaded: Any, split: dict[str, np.ndarray], names: list[str], cfg: Any, seed: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    train, test = split["train"], split["test"]
    X, genes = lognorm_hvg(loaded, train, cfg.n_hvg)
    scaler = StandardScaler().fit(X[train])
    Xtr, Xte = scaler.transform(X[train]), scaler.transform(X[test])
    ytr = np.asarray(loaded.labels[train]).astype(str)
    cells = [loaded.expression.cell_ids[i] for i in test]
    out: dict[str, Any] = {
        "n_genes": len(genes),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "test_cells": cells,
        "truth": np.asarray(loaded.labels[test]).astype(str).tolist(),
        "train_counts": {str(k): int(v) for k, v in zip(*np.unique(ytr, return_counts=True))},
        "methods": {},
    }
    n_pcs = max(1, min(cfg.n_pcs, Xtr.shape[0] - 1, Xtr.shape[1]))
    pca = PCA(n_components=n_pcs, random_state=seed).fit(Xtr)
    embs = {"test_cells": np.asarray(cells), "pca": pca.transform(Xte).astype(np.float32)}
    if "logreg" in names:
        t = time.perf_counter()
        clf = LogisticRegression(max_iter=2000, random_state=seed).fit(Xtr, ytr)
        out["methods"]["logreg"] = {
            "prediction": clf.predict(Xte).tolist(),
            "trainable_params": int(clf.coef_.size + clf.intercept_.size),
            "train_seconds": round(time.perf_counter() - t, 3),
        }
    if "knn_pca" in names:
        t = time.perf_counter()
        k = min(cfg.knn_k, len(train))
        knn = KNeighborsClassifier(n_neighbors=k).fit(pca.transform(Xtr), ytr)
        out["methods"]["knn_pca"] = {
            "prediction": knn.predict(embs["pca"]).tolist(),
            "trainable_params": 0,
            "train_seconds": round(time.perf_counter() - t, 3),
        }
    return out, embs


def batch_baselines(
    loaded: Any,
    split: dict[str, np.ndarray],
    names: list[str],
    cfg: Any,
    batch_column: str,
    seed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from sctune.core.errors import DataError
    from sctune.tasks.batch_correction import metrics

    train, test = split["train"], split["test"]
    if batch_column not in loaded.obs:
        raise DataError(f"baselines: batch column '{batch_column}' not found in adata.obs")
    X, _ = lognorm_hvg(loaded, train, cfg.n_hvg)
    batch = np.asarray(loaded.obs[batch_column]).astype(str)[test]
    labels = np.asarray(loaded.labels[test]).astype(str)
    lab = labels if len(set(labels.tolist())) >= 2 and "unknown" not in labels else None
    cells = [loaded.expression.cell_ids[i] for i in test]
    pre = metrics.pca(X[test], cfg.n_pcs, seed)
    embs = {"test_cells": np.asarray(cells), "pca": pre}
    out: dict[str, Any] = {
        "n_test": int(len(test)),
        "test_cells": cells,
        "truth": labels.tolist(),
        "batch": batch.tolist(),
        "methods": {},
    }
    for name in names:
        t = time.perf_counter()
        emb = pre if name == "pca" else metrics.harmony(pre, batch, seed)
        embs[name] = emb
        scores = metrics.scib_scores(emb, batch, lab, pre)
        out["methods"][name] = {
            "scores": scores,
            "trainable_params": 0,
            "train_seconds": round(time.perf_counter() - t, 3),
        }
    return out, embs
