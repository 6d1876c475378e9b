"""Logistic regression on log1p top-HVG expression, on the exact split of an sctune run.

Usage (repository root)::

    python benchmarks/lr_baseline.py RUN_DIR [RUN_DIR ...] --out benchmarks/methods/results/lr_baseline.json

For each run directory: read ``recipe.resolved.yaml`` (data path, label column) and
``split.json`` (cell ids of train/valid/test), load the same matrix as the run (sctune's own
loader, so ``source: auto`` picks the same counts or log-normalised matrix), log-normalise counts
(``normalize_total(1e4)`` + ``log1p``; log-normalised input is used as is), choose the top
``--n-hvg`` highly variable genes (scanpy ``seurat`` flavour) on the TRAINING cells only, scale
with the training mean/std, fit ``LogisticRegression`` on the training cells and score the test
cells with the same metrics as the ``cell_type`` task (macro F1 over all training classes). The
result JSON is keyed by dataset label (as ``benchmarks/report.py`` expects).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import cell_label


def baseline(run_dir: Path, n_hvg: int = 2000, seed: int = 0) -> dict[str, Any]:
    import anndata as ad
    import scanpy as sc
    from scipy import sparse
    from sklearn import metrics as skm
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from sctune.core.data import load_data, read_split
    from sctune.core.recipe import DataConfig

    recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    cfg = DataConfig.model_validate(recipe["data"])
    data = load_data(cfg, seed=recipe.get("seed", 0))
    expr = data.expression
    split = read_split(run_dir / "split.json", list(expr.cell_ids))
    adata = ad.AnnData(X=sparse.csr_matrix(expr.X, dtype=np.float32))
    adata.var_names = [str(g) for g in expr.genes]
    adata.var_names_make_unique()
    if expr.kind == "counts":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    elif expr.kind != "lognorm":
        raise SystemExit(
            f"{run_dir}: the run's matrix holds {expr.kind} values; need counts or log-normalised"
        )
    train, test = split["train"], split["test"]
    tr = adata[train].copy()
    n_top = min(n_hvg, adata.n_vars)
    if n_top < adata.n_vars:
        sc.pp.highly_variable_genes(tr, n_top_genes=n_top, flavor="seurat")
        keep = tr.var["highly_variable"].to_numpy()
    else:
        keep = np.ones(adata.n_vars, dtype=bool)
    Xtr = tr.X[:, keep].toarray()
    Xte = adata[test].X[:, keep].toarray()
    scaler = StandardScaler().fit(Xtr)
    classes = sorted(set(data.labels[train]))
    index = {c: i for i, c in enumerate(classes)}
    ytr = np.array([index[c] for c in data.labels[train]])
    yte = np.array([index.get(c, -1) for c in data.labels[test]])
    start = time.perf_counter()
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(Xtr), ytr)
    seconds = time.perf_counter() - start
    pred = clf.predict(scaler.transform(Xte))
    labels = list(range(len(classes)))
    _, _, f1, _ = skm.precision_recall_fscore_support(
        yte, pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "dataset": cell_label(recipe["data"]["path"]),
        "data_path": recipe["data"]["path"],
        "split_from": str(run_dir),
        "matrix": f"{data.source} ({expr.kind})",
        "n_hvg": int(keep.sum()),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "accuracy": float(skm.accuracy_score(yte, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(yte, pred)),
        "macro_f1": float(f1),
        "trainable_params": int(clf.coef_.size + clf.intercept_.size),
        "train_seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "run_dirs", nargs="+", help="sctune run directories (their split.json is reused)"
    )
    ap.add_argument("--n-hvg", type=int, default=2000)
    ap.add_argument("--out", help="write the JSON (keyed by dataset) here")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    for d in args.run_dirs:
        res = baseline(Path(d), n_hvg=args.n_hvg)
        out[res["dataset"]] = res
        print(
            f"{res['dataset']}: accuracy {res['accuracy']:.4f}  balanced {res['balanced_accuracy']:.4f}  "
            f"macro F1 {res['macro_f1']:.4f}  ({res['n_hvg']} genes, {res['n_train']} train / {res['n_test']} test)"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
