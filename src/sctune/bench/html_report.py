"""The self-contained HTML report: tables plus plots embedded as base64 PNG (no network)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sctune.bench import markdown as md
from sctune.bench.report import NO_BACKBONE, fmt, png
from sctune.bench.spec import Plan

MARKERS = "osD^v<>Ph*Xp"


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points: no other point has lower-or-equal cost and a higher score."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def pareto_figure(group: list[dict[str, Any]], main: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = [("trainable_params", "trainable parameters"), ("train_seconds", "training time (s)"),
             ("peak_rss_mb", "peak memory (MB, process RSS)")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    backbones = sorted({s["backbone"] for s in group})
    methods = sorted({s["method"] for s in group})
    colors = {b: plt.get_cmap("tab10")(i) for i, b in enumerate(backbones)}
    for ax, (cost, xlabel) in zip(axes, costs):
        pts = []
        for s in group:
            x, y = s.get(cost), s.get(main)
            if x is None or y is None or (isinstance(y, float) and math.isnan(y)):
                continue
            lo, hi = s.get(f"{main}_ci_low"), s.get(f"{main}_ci_high")
            err = None if lo is None or hi is None or lo != lo else [[y - lo], [hi - y]]
            marker = MARKERS[methods.index(s["method"]) % len(MARKERS)]
            ax.errorbar(x, y, yerr=err, fmt=marker, color=colors[s["backbone"]], capsize=3,
                        markersize=7, label=md.label(s), alpha=0.9)  # fmt: skip
            pts.append((float(x), float(y)))
        front = _pareto(pts)
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="grey",
                    linestyle="--", linewidth=1, label="Pareto front")  # fmt: skip
        ax.set_xscale("symlog", linthresh=1.0 if cost != "trainable_params" else 10.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(main.replace("_", " "))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return png(fig)


def heatmap_figure(rows: list[dict[str, Any]], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share: dict[str, float] = {}
    rare: dict[str, bool] = {}
    for r in rows:
        share[r["class"]], rare[r["class"]] = r["train_share"], r["rare"]
    classes = sorted(share, key=lambda c: -share[c])
    names = []
    for r in rows:
        n = md.label(r)
        if n not in names:
            names.append(n)
    M = np.full((len(names), len(classes)), np.nan)
    for r in rows:
        if r["f1"] is not None:
            M[names.index(md.label(r)), classes.index(r["class"])] = r["f1"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(classes), 1.2 + 0.38 * len(names)))
    im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(
        [f"{c}{' (rare)' if rare[c] else ''}\n{share[c]:.1%}" for c in classes],
        rotation=45, ha="right", fontsize=8,
    )  # fmt: skip
    for i, c in enumerate(classes):
        if rare[c]:
            ax.get_xticklabels()[i].set_color("crimson")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if M[i, j] < 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.03, label="F1 (mean over seeds)")
    ax.set_title(title + " — classes by training share; rare classes in red")
    fig.tight_layout()
    return png(fig)


def _umap(X: np.ndarray, seed: int = 0) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

        k = max(2, min(15, len(X) - 1))
        return np.asarray(umap.UMAP(n_neighbors=k, random_state=seed, n_jobs=1).fit_transform(X))


def umap_figure(root: Path, plan: Plan, task: str, dataset: str, title: str) -> str | None:
    """One panel per method (first seed's test cells), coloured by cell type (cell typing) or
    batch (batch correction); the baselines' PCA (and Harmony) embeddings beside them."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sctune.bench.baselines import baseline_path
    from sctune.bench.runner import cell_finished, run_dir

    seed = plan.spec.seed_list[0]
    bc = plan.tasks[task] != "cell_type"
    panels: list[tuple[str, np.ndarray, np.ndarray]] = []
    for cell in plan.cells:
        if (cell.task, cell.dataset, cell.seed) != (task, dataset, seed):
            continue
        if not cell_finished(root, cell):
            continue
        a = ad.read_h5ad(run_dir(root, cell) / "predictions.h5ad")
        test = a.obs["sctune_split"].astype(str).to_numpy() == "test"
        if "X_sctune" not in a.obsm or not test.any():
            continue
        col = (
            plan.spec.tasks[task].task.get("batch_column", "batch")
            if bc
            else cell.recipe["data"].get("label_column", "cell_type")
        )
        if col not in a.obs:
            continue
        X = np.asarray(a.obsm["X_sctune"])[test][: plan.spec.report.umap_max_cells]
        colour = a.obs[col].astype(str).to_numpy()[test][: plan.spec.report.umap_max_cells]
        panels.append((f"{cell.backbone} / {cell.method}", X, colour))
    bfile = baseline_path(root, task, dataset, seed)
    if bfile.is_file() and bfile.with_suffix(".npz").is_file():
        base = json.loads(bfile.read_text())
        embs = np.load(bfile.with_suffix(".npz"))
        colour = np.asarray(base["batch"] if bc else base["truth"]).astype(str)
        for name in ("pca", "harmony"):
            if name in embs:
                n = plan.spec.report.umap_max_cells
                panels.append((f"baseline: {name}", embs[name][:n], colour[:n]))
    if not panels:
        return None
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False)
    cats = sorted({c for _, _, col in panels for c in col})
    cmap = plt.get_cmap("tab20")
    colors = {c: cmap(i % 20) for i, c in enumerate(cats)}
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, X, col) in zip(axes.ravel(), panels):
        Y = _umap(X) if len(X) > 3 else np.zeros((len(X), 2))
        size = min(30.0, max(4.0, 3000.0 / max(len(Y), 1)))
        ax.scatter(Y[:, 0], Y[:, 1], c=[colors[c] for c in col], s=size, linewidths=0)
        ax.set_title(name, fontsize=9)
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=colors[c], label=c) for c in cats
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title="batch" if bc else "cell type")  # fmt: skip
    fig.suptitle(f"{title} — UMAP of test-cell embeddings, seed {seed}")
    fig.tight_layout()
    return png(fig)


def figures(
    root: Path,
    plan: Plan,
    summary: list[dict[str, Any]],
    classes: list[dict[str, Any]],
    *,
    log: Callable[[str], None] = print,
) -> dict[tuple[str, str], dict[str, str]]:
    """Per (task, dataset): Pareto, per-class heatmap (cell typing) and UMAP grid data URIs."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for task, dataset in md.sections(plan, summary):
        title = f"{task} — {dataset}"
        group = [s for s in summary if (s["task"], s["dataset"]) == (task, dataset)]
        main = "macro_f1" if plan.tasks[task] == "cell_type" else "total"
        figs = {"pareto": pareto_figure(group, main, title)}
        cls = [c for c in classes if (c["task"], c["dataset"]) == (task, dataset)]
        if cls:
            figs["per_class"] = heatmap_figure(cls, title)
        if plan.spec.report.umap:
            u = umap_figure(root, plan, task, dataset, title)
            if u:
                figs["umap"] = u
        out[(task, dataset)] = figs
        log(f"figures {title}: {', '.join(figs)}")
    return out


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.8em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f1f1f1}
td:first-child,th:first-child{text-align:left}
tr.baseline td{background:#fafaf0}
figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #ddd}
.note{color:#555;font-size:13px}
.bad{color:#b00}
code{background:#f4f4f4;padding:0 3px}
"""


def _table(
    head: list[str], body: list[list[str]], cls: list[str] | None = None, tid: str = ""
) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    rows = []
    for i, r in enumerate(body):
        c = f' class="{cls[i]}"' if cls and cls[i] else ""
        rows.append(f"<tr{c}>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>")
    return f'<table id="{tid}" class="results"><thead><tr>{h}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render(
    plan: Plan,
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    comps: list[dict[str, Any]],
    classes: list[dict[str, Any]],
    env: dict[str, Any],
    figs: dict[tuple[str, str], dict[str, str]],
    root: Path,
) -> str:
    spec = plan.spec
    e = html.escape
    lookup = {
        (c["task"], c["dataset"], c["backbone"], c["method"], c["reference"]): c for c in comps
    }
    n_ok = sum(r["status"] == "ok" for r in rows if r["backbone"] != NO_BACKBONE)
    n = sum(r["backbone"] != NO_BACKBONE for r in rows)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>sctune bench: {e(spec.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>sctune bench: {e(spec.name)}</h1>",
        f"<p>{e(spec.description.strip())}</p>" if spec.description.strip() else "",
        f'<p class="note">cells finished: <b id="cells-ok">{n_ok}</b> of {n}; seeds {e(str(spec.seed_list))}; '
        f"sctune {e(str(env.get('sctune', '?')))}, torch {e(str(env.get('torch', '?')))}, "
        f"device {e(md.device(env))}. Results folder: <code>{e(str(root))}</code> "
        "(recipes/, splits/, env.json let anyone rerun a table).</p>",
        f'<p class="note">{e(md.TEST_NOTE)}</p>',
    ]
    for task, dataset in md.sections(plan, summary):
        ct = plan.tasks[task] == "cell_type"
        main = "macro_f1" if ct else "total"
        refs = spec.stats.references(plan.tasks[task])
        sid = f"{task}-{dataset}"
        group = md.order(
            [s for s in summary if (s["task"], s["dataset"]) == (task, dataset)], plan
        )
        parts.append(f'<section id="section-{e(sid)}"><h2>{e(task)} — {e(dataset)}</h2>')
        extra = (
            ("accuracy", "balanced_accuracy", "rare_macro_f1") if ct else ("bio", "batch", "ilisi")
        )
        head = ["method", "seeds", "trainable", f"{main} [95% CI]", *extra]
        head += [f"Δ {main} vs {r}" for r in refs] + ["train s", "peak MB"]
        body, cls = [], []
        for s in group:
            body.append(
                [md.label(s), str(s["n_seeds"]) + (f" ({s['n_failed']} failed)" if s["n_failed"] else ""),
                 md.params(s), md.ci(s, main)]
                + [md.ci(s, m) for m in extra]
                + [md.delta(lookup.get((task, dataset, s["backbone"], s["method"], r))) for r in refs]
                + [fmt(s.get("train_seconds"), 1), fmt(s.get("peak_rss_mb"), 0)]
            )  # fmt: skip
            cls.append("baseline" if s["kind"] != "method" else "")
        parts.append(_table(head, body, cls, tid=f"summary-{sid}"))
        f = figs.get((task, dataset), {})
        captions = {
            "pareto": "Pareto front: cost (trainable parameters, training time, peak memory) "
            f"against {main.replace('_', ' ')}; bars are 95 % intervals over seeds",
            "per_class": "Per-class F1 (mean over seeds); columns ordered by training share",
            "umap": "UMAP grid of methods (first seed, test cells)",
        }
        for kind, uri in f.items():
            parts.append(
                f'<figure class="plot" id="{kind}-{e(sid)}"><img alt="{e(captions[kind])}" '
                f'src="{uri}"><figcaption>{e(captions[kind])}</figcaption></figure>'
            )
        parts.append("</section>")
    bad = [r for r in rows if r["status"] != "ok" and r["backbone"] != NO_BACKBONE]
    if bad:
        parts.append('<h2 class="bad">Cells that did not finish</h2><ul>')
        parts += [
            f"<li><code>{e(r['cell'])}</code>: {e(str(r['status']))} — {e(str(r.get('error') or ''))}</li>"
            for r in bad
        ]
        parts.append("</ul>")
    if plan.skipped:
        parts.append("<h2>Skipped cells</h2><ul>")
        parts += [
            f"<li>{e(s['task'])}/{e(s['dataset'])}/{e(s['backbone'])}/{e(s['method'])}: {e(s['reason'])}</li>"
            for s in plan.skipped
        ]
        parts.append("</ul>")
    parts.append(
        "<script>window.addEventListener('load',function(){var ok=0;"
        "for(var i=0;i<document.images.length;i++){var im=document.images[i];"
        "if(im.complete&&im.naturalWidth>0){ok++;}}"
        "document.body.setAttribute('data-images-loaded',String(ok));});</script>"
    )
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)
