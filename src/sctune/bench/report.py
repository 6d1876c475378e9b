"""The results folder's tables, statistics, markdown summary and self-contained HTML report.

``results/`` holds:

- ``table.csv`` / ``table.json``: one tidy row per cell and seed (methods and baselines);
- ``summary.csv`` / ``summary.json``: per grid cell, the mean over seeds with its 95 % t interval;
- ``comparisons.csv`` / ``comparisons.json``: every method against full fine-tuning (same backbone)
  and against the logistic regression (same dataset), paired on seeds and splits;
- ``per_class.csv``: per-class F1 (mean over seeds) with each class's training share and rarity;
- ``results.md``: the markdown summary; ``report.html``: one self-contained page (plots as
  base64 PNG, no network) with the tables, the Pareto fronts, the per-class heatmap and the
  UMAP grid.
"""

from __future__ import annotations

import base64
import io
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sctune.bench import stats
from sctune.bench.spec import Plan

NO_BACKBONE = "-"
CT_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "weighted_f1", "rare_macro_f1")
BC_METRICS = ("total", "bio", "batch", "ilisi", "kbet", "nmi", "ari")
COST = ("trainable_params", "train_seconds", "wall_seconds", "peak_rss_mb", "peak_gpu_mb")


def versions() -> dict[str, Any]:
    """sctune's run environment plus the libraries the bench's statistics and baselines use."""
    from importlib import metadata

    from sctune import api

    env = dict(api.env_info())
    libs: dict[str, str | None] = {}
    for dist in (
        "scikit-learn",
        "scipy",
        "scanpy",
        "anndata",
        "scib-metrics",
        "harmonypy",
        "umap-learn",
        "matplotlib",
        "numpy",
    ):
        try:
            libs[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            libs[dist] = None
    env["bench_libraries"] = libs
    return env


# ----------------------------------------------------------------------------- collecting


def _read_obs(path: Path) -> Any:
    import anndata as ad

    a = ad.read_h5ad(path, backed="r")
    try:
        return a.obs.copy()
    finally:
        a.file.close()


def collect(root: Path, plan: Plan) -> tuple[list[dict[str, Any]], dict[tuple[Any, ...], Any]]:
    """Tidy rows (one per cell and seed, methods and baselines) and, for the paired statistics,
    each row's test predictions: key (task, dataset, backbone, method, seed) -> (cells, truth,
    prediction, training label counts)."""
    from sctune.bench.baselines import baseline_path
    from sctune.bench.runner import read_cell_record, run_dir

    rows: list[dict[str, Any]] = []
    preds: dict[tuple[Any, ...], Any] = {}
    per_backbone = set(plan.spec.baselines.per_backbone)
    for cell in plan.cells:
        rec = read_cell_record(root, cell) or {}
        row: dict[str, Any] = {
            **cell.coords,
            "kind": "backbone baseline" if cell.method in per_backbone else "method",
            "adapters": "+".join(plan.methods[cell.method]),
            "status": rec.get("status", "not run") if rec.get("hash") == cell.hash else "not run",
            "cell": cell.id,
        }
        if row["status"] == "ok":
            try:
                _fill_run(row, run_dir(root, cell), plan, cell, preds)
            except (OSError, ValueError, KeyError) as exc:
                row["status"], row["error"] = "unreadable", f"{type(exc).__name__}: {exc}"
        else:
            row["error"] = rec.get("error")
        for k in ("wall_seconds", "cpu_seconds", "peak_rss_mb"):
            row[k] = rec.get(k)
        rows.append(row)
    for task, dataset, seed in sorted({(c.task, c.dataset, c.seed) for c in plan.cells}):
        path = baseline_path(root, task, dataset, seed)
        if not path.is_file():
            continue
        base = json.loads(path.read_text())
        truth = np.asarray(base["truth"], dtype=object).astype(str)
        for name, res in base["methods"].items():
            row = {
                "task": task, "dataset": dataset, "backbone": NO_BACKBONE, "method": name,
                "seed": seed, "kind": "baseline", "adapters": "", "status": "ok",
                "cell": path.stem, "trainable_params": res.get("trainable_params"),
                "train_seconds": res.get("train_seconds"), "n_test": base.get("n_test"),
            }  # fmt: skip
            if "prediction" in res:
                pred = np.asarray(res["prediction"], dtype=object).astype(str)
                counts = base.get("train_counts", {})
                row.update(_ct_metrics(truth, pred, counts, plan.spec.stats.rare_fraction))
                preds[(task, dataset, NO_BACKBONE, name, seed)] = (
                    list(base["test_cells"]), truth, pred, counts,
                )  # fmt: skip
            else:
                row.update({k: res["scores"].get(k) for k in BC_METRICS})
            rows.append(row)
    return rows, preds


def _fill_run(
    row: dict[str, Any], rdir: Path, plan: Plan, cell: Any, preds: dict[tuple[Any, ...], Any]
) -> None:
    m = json.loads((rdir / "metrics.json").read_text())
    params, train, test = m.get("parameters") or {}, m.get("train") or {}, m.get("test") or {}
    row.update(
        trainable_params=params.get("trainable"),
        total_params=params.get("total"),
        train_seconds=train.get("seconds"),
        epochs_run=train.get("epochs_run"),
        peak_gpu_mb=train.get("peak_gpu_memory_mb"),
        n_test=(m.get("n_cells") or {}).get("test"),
        run_dir=str(rdir),
    )
    if plan.tasks[cell.task] == "cell_type":
        obs = _read_obs(rdir / "predictions.h5ad")
        label = cell.recipe["data"].get("label_column", "cell_type")
        is_test = obs["sctune_split"].astype(str).to_numpy() == "test"
        is_train = obs["sctune_split"].astype(str).to_numpy() == "train"
        truth = obs[label].astype(str).to_numpy()
        pred = obs["sctune_prediction"].astype(str).to_numpy()
        names, counts = np.unique(truth[is_train], return_counts=True)
        train_counts = {str(k): int(v) for k, v in zip(names, counts)}
        row.update(
            _ct_metrics(truth[is_test], pred[is_test], train_counts, plan.spec.stats.rare_fraction)
        )
        preds[(cell.task, cell.dataset, cell.backbone, cell.method, cell.seed)] = (
            [str(c) for c in obs.index[is_test]], truth[is_test], pred[is_test], train_counts,
        )  # fmt: skip
    else:
        scores = test.get("sctune") or {}
        row.update({k: scores.get(k) for k in BC_METRICS})


def rare_classes(counts: dict[str, int], fraction: float) -> list[str]:
    total = sum(counts.values()) or 1
    return sorted(c for c, n in counts.items() if n / total < fraction)


def _ct_metrics(
    truth: np.ndarray, pred: np.ndarray, counts: dict[str, int], rare_fraction: float
) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out: dict[str, Any] = stats.classification(truth, pred)
        rare = [c for c in rare_classes(counts, rare_fraction) if c in set(truth.tolist())]
        per = stats.f1_per_class(truth, pred, sorted(counts))
    out["rare_macro_f1"] = float(np.mean([per[c] for c in rare])) if rare else None
    out["n_rare_classes"] = len(rare)
    out["per_class_f1"] = per
    return out


# ----------------------------------------------------------------------------- statistics


def _key(r: dict[str, Any]) -> tuple[str, str, str, str]:
    return (r["task"], r["dataset"], r["backbone"], r["method"])


def summarise(rows: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Mean and t interval over seeds per (task, dataset, backbone, method)."""
    conf = plan.spec.stats.confidence
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for key, rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        s: dict[str, Any] = dict(zip(("task", "dataset", "backbone", "method"), key))
        s.update(kind=rs[0]["kind"], seeds=[r["seed"] for r in ok], n_seeds=len(ok),
                 n_failed=len(rs) - len(ok))  # fmt: skip
        metrics = CT_METRICS if plan.tasks[key[0]] == "cell_type" else BC_METRICS
        for m in metrics:
            mean, lo, hi = stats.mean_ci([r.get(m) for r in ok if r.get(m) is not None], conf)
            # every score here lies in [0, 1]; the t interval is clipped to that range
            lo, hi = (max(lo, 0.0), min(hi, 1.0)) if lo == lo else (lo, hi)
            s[m], s[f"{m}_ci_low"], s[f"{m}_ci_high"] = mean, lo, hi
        for c in COST:
            vals = [float(r[c]) for r in ok if r.get(c) is not None]
            s[c] = float(np.mean(vals)) if vals else None
        out.append(s)
    return out


def compare(
    rows: list[dict[str, Any]], preds: dict[tuple[Any, ...], Any], plan: Plan
) -> list[dict[str, Any]]:
    """Every method against each ``stats.compare_to`` reference, paired on seeds and splits."""
    cfg = plan.spec.stats
    ok: dict[tuple[str, str, str, str], dict[int, dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok":
            ok.setdefault(_key(r), {})[r["seed"]] = r
    out = []
    for key, by_seed in ok.items():
        task, dataset, backbone, method = key
        for ref in cfg.references(plan.tasks[task]):
            rkey = (task, dataset, backbone if ref in plan.methods else NO_BACKBONE, ref)
            if rkey == key or rkey not in ok:
                continue
            seeds = sorted(set(by_seed) & set(ok[rkey]))
            if not seeds:
                continue
            c: dict[str, Any] = {"task": task, "dataset": dataset, "backbone": backbone,
                                 "method": method, "reference": ref, "seeds": seeds}  # fmt: skip
            if plan.tasks[task] == "cell_type":
                pairs = []
                for s in seeds:
                    a = preds.get((*key, s))
                    b = preds.get((*rkey, s))
                    if a is None or b is None:
                        continue
                    order = {cid: i for i, cid in enumerate(b[0])}
                    if sorted(order) != sorted(a[0]):
                        raise ValueError(f"{key} and {rkey} seed {s} have different test cells")
                    perm = np.array([order[cid] for cid in a[0]])
                    pairs.append((a[1], a[2], b[2][perm]))
                if not pairs:
                    continue
                res = stats.paired_bootstrap(
                    pairs, n_boot=cfg.bootstrap, confidence=cfg.confidence
                )
                c.update(metric="macro_f1", test="paired bootstrap over test cells (by seed)")
            else:
                diffs = [
                    by_seed[s]["total"] - ok[rkey][s]["total"]
                    for s in seeds
                    if by_seed[s].get("total") is not None and ok[rkey][s].get("total") is not None
                ]
                if not diffs:
                    continue
                res = stats.paired_seeds(diffs, cfg.confidence)
                c.update(metric="total", test="paired t interval over seeds")
            c.update(res)
            per_seed: list[float] = list(res["per_seed"])
            c["wilcoxon_p"] = stats.wilcoxon_p(per_seed)
            c["seeds_better"] = int(sum(d > 0 for d in per_seed))
            out.append(c)
    return out


def per_class(preds: dict[tuple[Any, ...], Any], plan: Plan) -> list[dict[str, Any]]:
    """Per-class F1 averaged over seeds, with each class's training share and rarity."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for (task, dataset, backbone, method, _seed), v in preds.items():
        groups.setdefault((task, dataset, backbone, method), []).append(v)
    out = []
    for (task, dataset, backbone, method), vs in groups.items():
        counts: dict[str, int] = {}
        for _, _, _, c in vs:
            for k, n in c.items():
                counts[k] = counts.get(k, 0) + n
        total = sum(counts.values()) or 1
        rare = set(rare_classes(counts, plan.spec.stats.rare_fraction))
        for cls in sorted(counts, key=lambda k: -counts[k]):
            scores = [stats.f1_per_class(t, p, [cls])[cls] for _, t, p, _ in vs if cls in set(t)]
            out.append({
                "task": task, "dataset": dataset, "backbone": backbone, "method": method,
                "class": cls, "train_share": counts[cls] / total, "rare": cls in rare,
                "f1": float(np.mean(scores)) if scores else None, "n_seeds": len(scores),
            })  # fmt: skip
    return out


# ----------------------------------------------------------------------------- writing


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        return _clean(x.item())
    return x


def _csv(path: Path, rows: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> None:
    import pandas as pd

    flat = [{k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
             for k, v in r.items() if k not in drop} for r in rows]  # fmt: skip
    pd.DataFrame(flat).to_csv(path, index=False)


def write_report(root: Path, plan: Plan, *, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Write ``results/`` (tables, statistics, markdown, HTML) from what the folder holds."""
    rows, preds = collect(root, plan)
    summary = summarise(rows, plan)
    comps = compare(rows, preds, plan)
    classes = per_class(preds, plan)
    res = root / "results"
    res.mkdir(parents=True, exist_ok=True)
    files = {
        "table.csv": res / "table.csv",
        "table.json": res / "table.json",
        "summary.csv": res / "summary.csv",
        "summary.json": res / "summary.json",
        "comparisons.csv": res / "comparisons.csv",
        "comparisons.json": res / "comparisons.json",
        "per_class.csv": res / "per_class.csv",
        "results.md": res / "results.md",
        "report.html": res / "report.html",
    }
    _csv(files["table.csv"], rows, drop=("per_class_f1",))
    files["table.json"].write_text(json.dumps(_clean(rows), indent=1, default=str))
    _csv(files["summary.csv"], summary)
    files["summary.json"].write_text(json.dumps(_clean(summary), indent=1, default=str))
    _csv(files["comparisons.csv"], comps)
    files["comparisons.json"].write_text(json.dumps(_clean(comps), indent=1, default=str))
    _csv(files["per_class.csv"], classes)
    env = json.loads((root / "env.json").read_text()) if (root / "env.json").is_file() else {}
    from sctune.bench import html_report, markdown

    files["results.md"].write_text(markdown.render(plan, rows, summary, comps, classes, env, root))
    figures = html_report.figures(root, plan, summary, classes, log=log)
    files["report.html"].write_text(
        html_report.render(plan, rows, summary, comps, classes, env, figures, root)
    )
    log(f"report: {files['report.html']}")
    return files


def png(fig: Any) -> str:
    """A matplotlib figure as a base64 PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)
