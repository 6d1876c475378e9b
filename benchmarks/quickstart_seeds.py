"""Seed spread of a recipe: run it for seeds 0..N-1 and report mean, standard deviation and range.

Usage (from the repository root)::

    python benchmarks/quickstart_seeds.py                         # quickstart, seeds 0-4
    python benchmarks/quickstart_seeds.py --seeds 3 task.class_weights=balanced trainer.epochs=30
    python benchmarks/quickstart_seeds.py scgpt/small_lora_cell_type --out runs/seeds --json rows.json

Each seed runs ``sctune.api.run(recipe, [*overrides, "seed=S", "output.dir=OUT/seed-S", ...])``
in this process, one after the other. The recipe's seed changes both the split and the
initialisation, so the spread covers both. Plots and predictions.h5ad are switched off (they do
not change the metrics; ``--plots`` turns them back on). Output directories go to a temporary
folder that is deleted at the end unless ``--out`` is given.

Printed: one row per seed (test accuracy, balanced accuracy, macro F1, epochs run, best epoch,
training seconds, wall seconds of the whole run, CPU seconds of this process during the run), then
mean ± standard deviation (ddof=1) and min-max of every column, and the same summary as a markdown
table to paste. Training and wall seconds depend on what else the machine runs; the CPU seconds
do much less, so on a shared machine compare recipes by them (with ``trainer.num_threads=1`` they
approximate the wall time on one free core).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METRICS = {  # column -> (where in metrics.json, label in the markdown table)
    "accuracy": (("test", "accuracy"), "accuracy"),
    "balanced_accuracy": (("test", "balanced_accuracy"), "balanced accuracy"),
    "macro_f1": (("test", "macro_f1"), "macro F1"),
    "train_s": (("train", "seconds"), "training s"),
}


def _get(metrics: dict[str, Any], path: tuple[str, ...]) -> float:
    node: Any = metrics
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return float("nan")
        node = node[key]
    return float(node) if node is not None else float("nan")


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads), user + system."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def run_seeds(
    recipe: str,
    overrides: list[str],
    seeds: list[int],
    out: Path,
    *,
    plots: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Run ``recipe`` once per seed; one row per seed with the test metrics and timings."""
    from sctune import api

    rows = []
    for seed in seeds:
        extra = [f"seed={seed}", f"output.dir={out / f'seed-{seed}'}", "output.overwrite=true"]
        if not plots:
            extra += ["output.plots=false", "output.predictions=false"]
        start, cpu0 = time.perf_counter(), _cpu_seconds()
        result = api.run(recipe, [*overrides, *extra], progress=progress, log=lambda m: None)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
        m = result.metrics
        row: dict[str, Any] = {"seed": seed}
        row.update({col: _get(m, path) for col, (path, _) in METRICS.items()})
        row["epochs_run"] = m.get("train", {}).get("epochs_run")
        row["best_epoch"] = m.get("train", {}).get("best_epoch")
        row["wall_s"] = wall
        row["cpu_s"] = cpu
        rows.append(row)
        print(
            f"seed {seed}: accuracy {row['accuracy']:.3f}  balanced {row['balanced_accuracy']:.3f}"
            f"  macro F1 {row['macro_f1']:.3f}  epochs {row['epochs_run']} (best {row['best_epoch']})"
            f"  training {row['train_s']:.1f} s  wall {wall:.1f} s  CPU {cpu:.1f} s",
            flush=True,
        )
    return pd.DataFrame(rows).set_index("seed")


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1), min and max of every metric column."""
    cols = [*METRICS, "wall_s", "cpu_s"]
    return df[cols].agg(["mean", "std", "min", "max"]).T


def markdown(summary: pd.DataFrame, n: int, title: str) -> str:
    lines = [
        f"{title} ({n} seeds: mean ± sd, min-max)",
        "",
        "| metric | mean ± sd | min-max |",
        "|---|---|---|",
    ]
    for col, (_, label) in METRICS.items():
        s = summary.loc[col]
        fmt = "{:.1f}" if col.endswith("_s") else "{:.3f}"
        mean_sd = f"{fmt.format(s['mean'])} ± {fmt.format(s['std'])}"
        lines.append(f"| {label} | {mean_sd} | {fmt.format(s['min'])}-{fmt.format(s['max'])} |")
    s = summary.loc["cpu_s"]
    lines.append(
        f"| CPU s (whole run) | {s['mean']:.1f} ± {s['std']:.1f} | {s['min']:.1f}-{s['max']:.1f} |"
    )
    return "\n".join(lines)


def per_seed_markdown(df: pd.DataFrame) -> str:
    lines = [
        "| seed | accuracy | balanced accuracy | macro F1 | training s | CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for seed, r in df.iterrows():
        lines.append(
            f"| {seed} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | "
            f"{r['macro_f1']:.3f} | {r['train_s']:.1f} | {r['cpu_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("recipe", nargs="?", default="quickstart", help="recipe path or shipped name")
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every seed")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    ap.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--out", type=Path, help="keep run directories here (default: a temp folder)")
    ap.add_argument("--json", type=Path, help="also write the per-seed rows and summary here")
    ap.add_argument("--plots", action="store_true", help="keep plots and predictions.h5ad")
    ap.add_argument("--progress", action="store_true", help="show the training progress bars")
    args = ap.parse_args(argv)
    if "=" in args.recipe:  # only overrides were given: the recipe is the quickstart
        args.overrides.insert(0, args.recipe)
        args.recipe = "quickstart"
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    title = " ".join([args.recipe, *args.overrides])
    print(f"{title}: seeds {seeds[0]}-{seeds[-1]}", flush=True)
    if args.out is not None:
        df = run_seeds(
            args.recipe, args.overrides, seeds, args.out, plots=args.plots, progress=args.progress
        )
    else:
        with tempfile.TemporaryDirectory(prefix="sctune-seeds-") as tmp:
            df = run_seeds(
                args.recipe,
                args.overrides,
                seeds,
                Path(tmp),
                plots=args.plots,
                progress=args.progress,
            )
    summary = summarise(df)

    print()
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 120):
        print(df.to_string())
        print()
        print(summary.to_string())
    print()
    for col, (_, label) in METRICS.items():
        s = summary.loc[col]
        print(
            f"{label:>18}: {s['mean']:.3f} ± {s['std']:.3f}  (min {s['min']:.3f}, max {s['max']:.3f})"
        )
    print()
    print(markdown(summary, len(df), title))
    print()
    print(per_seed_markdown(df))
    if args.json is not None:
        payload = {
            "recipe": args.recipe,
            "overrides": args.overrides,
            "seeds": seeds,
            "rows": json.loads(df.reset_index().to_json(orient="records")),
            "summary": json.loads(summary.to_json(orient="index")),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if np.isnan(df["macro_f1"]).any():
        print("warning: some runs reported no macro F1", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
