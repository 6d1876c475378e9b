"""The markdown summary (``results/results.md``; ``--docs FILE`` puts it between markers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sctune.bench.report import NO_BACKBONE, fmt
from sctune.bench.spec import Plan

START, END = "<!-- sctune-bench:start -->", "<!-- sctune-bench:end -->"
TEST_NOTE = (
    "Intervals are 95 % Student-t intervals over seeds (`scipy.stats.t`), clipped to [0, 1]. Δ columns: paired "
    "comparison on the same seeds and splits — for cell typing a paired bootstrap over test "
    "cells stratified by seed (both methods scored on the same resampled cells; percentile "
    "interval; p two-sided), for batch correction a t interval of the per-seed differences of "
    "the total score, with the exact Wilcoxon signed-rank p (0.25 at best with 3 seeds). `wins` counts the seeds where the method scored higher. The per-seed "
    "Wilcoxon signed-rank p is in `comparisons.csv` (with 3 seeds it cannot go below 0.25)."
)


def ci(s: dict[str, Any], m: str) -> str:
    if s.get(m) is None:
        return "–"
    lo, hi = s.get(f"{m}_ci_low"), s.get(f"{m}_ci_high")
    if lo is None or hi is None or lo != lo:
        return fmt(s[m])
    return f"{fmt(s[m])} [{fmt(lo)}, {fmt(hi)}]"


def params(s: dict[str, Any]) -> str:
    x = s.get("trainable_params")
    return "–" if x is None else f"{round(x):,}"


def device(env: dict[str, Any]) -> str:
    import os

    return "CUDA" if env.get("cuda_available") else f"CPU ({os.cpu_count()} cores here)"


def delta(c: dict[str, Any] | None) -> str:
    if not c:
        return "–"
    p = c["p"]
    ptxt = "p<0.001" if p < 0.001 else f"p={p:.3f}"
    return (
        f"{c['delta']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] {ptxt}, "
        f"wins {c['seeds_better']}/{len(c['seeds'])}"
    )


def label(s: dict[str, Any]) -> str:
    return s["method"] if s["backbone"] == NO_BACKBONE else f"{s['backbone']} / {s['method']}"


def order(summary: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    methods = list(plan.methods)
    bb = list(plan.spec.backbones)

    def key(s: dict[str, Any]) -> tuple[int, int, int, str]:
        base = s["backbone"] == NO_BACKBONE
        return (
            int(base),
            bb.index(s["backbone"]) if not base else 0,
            methods.index(s["method"]) if s["method"] in methods else 0,
            s["method"],
        )

    return sorted(summary, key=key)


def sections(plan: Plan, summary: list[dict[str, Any]]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for s in summary:
        if (s["task"], s["dataset"]) not in seen:
            seen.append((s["task"], s["dataset"]))
    return seen


def render(
    plan: Plan,
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    comps: list[dict[str, Any]],
    classes: list[dict[str, Any]],
    env: dict[str, Any],
    root: Path,
) -> str:
    spec = plan.spec
    ok = sum(r["status"] == "ok" for r in rows if r["backbone"] != NO_BACKBONE)
    n = sum(r["backbone"] != NO_BACKBONE for r in rows)
    lines = [
        f"# sctune bench: {spec.name}",
        "",
        spec.description.strip(),
        "",
        f"- cells: {ok} of {n} finished, seeds {spec.seed_list}; skipped cells: "
        f"{len(plan.skipped)}; absent optional datasets: "
        + (", ".join(f"{k} ({v})" for k, v in plan.absent.items()) or "none"),
        f"- sctune {env.get('sctune', '?')}, torch {env.get('torch', '?')}, device "
        f"{device(env)}; library versions in `env.json`; every cell's recipe in "
        "`recipes/`, every split in `splits/`",
        "",
        TEST_NOTE,
        "",
    ]
    lookup = {
        (c["task"], c["dataset"], c["backbone"], c["method"], c["reference"]): c for c in comps
    }
    for task, dataset in sections(plan, summary):
        group = order([s for s in summary if (s["task"], s["dataset"]) == (task, dataset)], plan)
        ct = plan.tasks[task] == "cell_type"
        main = "macro_f1" if ct else "total"
        refs = spec.stats.references(plan.tasks[task])
        lines += [f"## {task} — {dataset}", ""]
        if ct:
            head = ["method", "seeds", "trainable", "macro F1 [95% CI]", "accuracy", "bal. acc.",
                    "rare-class F1"]  # fmt: skip
        else:
            head = ["method", "seeds", "trainable", "total [95% CI]", "bio", "batch", "iLISI"]
        head += [f"Δ {main} vs {r}" for r in refs] + ["train s", "peak MB"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in group:
            cells = [label(s), str(s["n_seeds"]) + (f" ({s['n_failed']} failed)" if s["n_failed"] else ""),
                     params(s), ci(s, main)]  # fmt: skip
            extra = (
                ("accuracy", "balanced_accuracy", "rare_macro_f1")
                if ct
                else ("bio", "batch", "ilisi")
            )
            cells += [ci(s, m) for m in extra]
            cells += [
                delta(lookup.get((task, dataset, s["backbone"], s["method"], r))) for r in refs
            ]
            cells += [fmt(s.get("train_seconds"), 1), fmt(s.get("peak_rss_mb"), 0)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if ct:
            rare = sorted(
                {
                    c["class"]
                    for c in classes
                    if c["dataset"] == dataset and c["task"] == task and c["rare"]
                }
            )
            lines.append(
                f"Rare classes (< {spec.stats.rare_fraction:.0%} of training cells): "
                + (", ".join(rare) if rare else "none")
                + "; per-class F1 of every method in `per_class.csv` and the HTML report."
            )
            lines.append("")
    failed = [r for r in rows if r["status"] not in ("ok",) and r["backbone"] != NO_BACKBONE]
    if failed:
        lines += ["## Cells that did not finish", ""]
        lines += [f"- `{r['cell']}`: {r['status']} — {r.get('error') or ''}" for r in failed]
        lines.append("")
    if plan.skipped:
        lines += ["## Skipped cells", ""]
        lines += [
            f"- {s['task']}/{s['dataset']}/{s['backbone']}/{s['method']}: {s['reason']}"
            for s in plan.skipped
        ]
        lines.append("")
    return "\n".join(lines).replace("\n\n\n", "\n\n")


def update_docs(path: Path, text: str) -> None:
    """Put ``text`` (headings one level down) between the bench markers of ``path``, or append
    it with the markers when there are none."""
    text = "\n".join("#" + ln if ln.startswith("#") else ln for ln in text.splitlines())
    block = f"{START}\n<!-- generated by 'sctune bench'; edits here are overwritten -->\n\n{text.strip()}\n\n{END}"
    old = path.read_text() if path.is_file() else ""
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block + "\n"
    path.write_text(new)
