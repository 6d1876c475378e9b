"""Render grid results (JSONL from ``benchmarks/grid.py``) as Markdown tables, one per dataset.

Usage::

    python benchmarks/report.py benchmarks/methods/results/scgpt_methods.jsonl
    python benchmarks/report.py RESULTS.jsonl --baseline benchmarks/methods/results/lr_baseline.json --out table.md

Columns: method, trainable parameters, accuracy, balanced accuracy, macro F1, training time (s),
wall time (s), peak memory (MB). The last row per cell hash wins (a rerun replaces a failed row).
Training time is the optimisation loop (``metrics.json`` ``train.seconds``); wall time is the
whole child process (imports, data loading, tokenization, training, evaluation, writing the run
directory); peak memory is the child's peak resident set size (CPU) or, when a GPU was used, the
peak allocated GPU memory in parentheses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import read_rows

METHOD_ORDER = [
    "zero_shot",
    "head",
    "full",
    "gene_token_prompt",
    "gene_encoder_prompt",
    "prefix_prompt",
    "lora",
]


def _fmt_int(v: Any) -> str:
    return f"{int(v):,}" if v is not None else "–"


def _fmt_float(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "–"


def _method_key(row: dict[str, Any]) -> tuple[int, str]:
    m = row.get("method", "")
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_hash: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("status") == "ok" or by_hash.get(r["hash"], {}).get("status") != "ok":
            by_hash[r["hash"]] = r
    return list(by_hash.values())


def render(rows: list[dict[str, Any]], baselines: dict[str, Any] | None = None) -> str:
    rows = latest(rows)
    ok = [r for r in rows if r.get("status") == "ok"]
    out: list[str] = []
    datasets = list(dict.fromkeys(r["dataset"] for r in ok))
    for ds in datasets:
        sub = sorted((r for r in ok if r["dataset"] == ds), key=_method_key)
        n = sub[0].get("n_cells") or {}
        out.append(
            f"### {ds} ({n.get('train', '?')} train / {n.get('valid', '?')} valid / "
            f"{n.get('test', '?')} test cells)\n"
        )
        out.append(
            "| method | trainable params | accuracy | balanced accuracy | macro F1 | "
            "training time (s) | wall time (s) | epochs | peak memory (MB) |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sub:
            mem = _fmt_float(r.get("peak_rss_mb"), 0)
            if r.get("peak_gpu_mb"):
                mem += f" ({r['peak_gpu_mb']:.0f} GPU)"
            out.append(
                f"| {r['method']} | {_fmt_int(r.get('trainable_params'))} | "
                f"{_fmt_float(r.get('accuracy'))} | {_fmt_float(r.get('balanced_accuracy'))} | "
                f"{_fmt_float(r.get('macro_f1'))} | {_fmt_float(r.get('train_seconds'), 1)} | "
                f"{_fmt_float(r.get('wall_seconds'), 1)} | {r.get('epochs_run', 0)} | {mem} |"
            )
        base = (baselines or {}).get(ds)
        if base:
            out.append(
                f"| *logistic regression, log1p top-{base.get('n_hvg', 2000)} HVGs (sklearn)* | "
                f"{_fmt_int(base.get('trainable_params'))} | {_fmt_float(base.get('accuracy'))} | "
                f"{_fmt_float(base.get('balanced_accuracy'))} | {_fmt_float(base.get('macro_f1'))} | "
                f"{_fmt_float(base.get('train_seconds'), 1)} | – | – | – |"
            )
        out.append("")
    bad = [r for r in rows if r.get("status") != "ok"]
    if bad:
        out.append("Cells without a result:\n")
        for r in bad:
            label = ", ".join(f"{k}={v}" for k, v in (r.get("labels") or {}).items())
            out.append(f"- {label}: **{r['status']}**: {r.get('error')}")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Markdown table from grid results")
    ap.add_argument("results", nargs="+", help="results JSONL file(s)")
    ap.add_argument("--baseline", help="JSON from benchmarks/lr_baseline.py, keyed by dataset")
    ap.add_argument("--out", help="write the Markdown here instead of stdout")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for path in args.results:
        rows += read_rows(Path(path))
    baselines = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    text = render(rows, baselines)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
