"""Grid benchmark runner: one validated recipe per grid cell, each run in its own subprocess.

Usage (from the repository root, so relative data paths resolve)::

    python benchmarks/grid.py benchmarks/methods/scgpt_methods.yaml
    python benchmarks/grid.py BENCH.yaml --dry-run            # list cells, validate, run nothing
    python benchmarks/grid.py BENCH.yaml --set trainer.epochs=1 --only lora

A benchmark file (style.md section 6)::

    name: scgpt_methods                  # optional; default: the file stem
    base: scgpt/small_lora_cell_type     # a recipe path (relative to this file or the working
                                         # directory), a shipped recipe name, or an inline mapping
    overrides:                           # optional dotted keys applied to every cell
      trainer.epochs: 10
    grid:                                # dotted keys -> lists; the cells are their product
      adapter: [{name: head}, {name: lora}]
      data.path: [scanpy:pbmc68k_reduced, ../shared/data/pbmc3k_seurat_labeled.h5ad]
    cell_overrides:                      # optional: extra keys for cells whose grid values match
      - when: {data.path: ../shared/data/pbmc3k_seurat_labeled.h5ad}
        set: {backbone.max_seq_len: 513}
    results: results/scgpt_methods.jsonl # optional; relative to this file
    runs_dir: runs/scgpt_methods         # optional; relative to this file

Each cell's recipe is validated with sctune's own validator; a cell that does not validate
(e.g. an adapter the backbone cannot host) is skipped with the reason logged and recorded.
Each valid cell runs ``sctune.api.run`` in a child Python process. The child's peak resident
memory is read with ``os.wait4`` (the rusage of exactly that child: ``RUSAGE_CHILDREN``'s
``ru_maxrss`` is a maximum over all children so far, so deltas of it are not per-run numbers).
Every run appends one JSON row to the results file, keyed by a hash of the cell's recipe; a
rerun skips cells whose hash already has an ``ok`` row (idempotent), and retries the others.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------ recipe plumbing


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping (creating mappings on the way); values are copied."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def get_dotted(data: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def load_base(base: Any, bench_dir: Path, registry: Any) -> dict[str, Any]:
    """The base recipe as a mapping: inline, a file (next to the bench or cwd) or a shipped name."""
    if isinstance(base, dict):
        return copy.deepcopy(base)
    from sctune.core.recipe import find_recipe, read_yaml

    for candidate in (bench_dir / str(base), Path(str(base))):
        if candidate.is_file():
            return read_yaml(candidate)
    return read_yaml(find_recipe(str(base), registry.recipe_dirs()))


def cell_label(value: Any) -> str:
    """A short label for one grid value: a plugin section's name, a path's stem, else str()."""
    if isinstance(value, dict) and "name" in value:
        extra = {k: v for k, v in value.items() if k != "name"}
        return value["name"] + (" " + json.dumps(extra, sort_keys=True) if extra else "")
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return "+".join(v["name"] for v in value)
    if isinstance(value, str) and ("/" in value or value.endswith(".h5ad")):
        return Path(value).stem
    if isinstance(value, str) and value.startswith("scanpy:"):
        return value.split(":", 1)[1]
    return str(value)


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Hash of everything that changes the result (the output section is excluded)."""
    key = {k: v for k, v in recipe.items() if k != "output"}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def expand(
    bench: dict[str, Any], bench_dir: Path, registry: Any, extra: list[tuple[str, Any]] = ()
) -> list[dict[str, Any]]:
    """One entry per grid cell: its grid values, its recipe mapping and its hash."""
    base = load_base(bench["base"], bench_dir, registry)
    for key, value in (bench.get("overrides") or {}).items():
        set_dotted(base, key, value)
    for key, value in extra:
        set_dotted(base, key, value)
    grid: dict[str, list[Any]] = bench.get("grid") or {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SystemExit(f"grid.{key}: expected a non-empty list, got {values!r}")
    keys = list(grid)
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        recipe = copy.deepcopy(base)
        for key, value in values.items():
            set_dotted(recipe, key, value)
        for rule in bench.get("cell_overrides") or []:
            if all(values.get(k) == v for k, v in (rule.get("when") or {}).items()):
                for key, value in (rule.get("set") or {}).items():
                    set_dotted(recipe, key, value)
        labels = {k: cell_label(v) for k, v in values.items()}
        h = recipe_hash(recipe)
        recipe["name"] = f"{bench['name']}-{h}"
        cells.append({"hash": h, "values": values, "labels": labels, "recipe": recipe})
    return cells


# ------------------------------------------------------------------------------ results file


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a half-written line from an interrupted run
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


# ------------------------------------------------------------------------------ running


def run_child(
    recipe: dict[str, Any], run_dir: Path, log_file: Path, timeout: float | None
) -> dict[str, Any]:
    """Run one recipe in a child process; return its result JSON plus wall time and peak RSS."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    spec = run_dir.parent / f"{run_dir.name}.recipe.json"
    out = run_dir.parent / f"{run_dir.name}.result.json"
    out.unlink(missing_ok=True)
    recipe = copy.deepcopy(recipe)
    recipe.setdefault("output", {})
    recipe["output"].update(dir=str(run_dir), overwrite=True)
    spec.write_text(json.dumps(recipe, indent=1))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec), str(out)]
    start = time.perf_counter()
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    result: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    result.update(
        returncode=proc.returncode,
        wall_seconds=round(wall, 2),
        # ru_maxrss is in KiB on Linux (bytes on macOS)
        peak_rss_mb=round(usage.ru_maxrss / (1024 if sys.platform != "darwin" else 2**20), 1),
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 2),
    )
    return result


def child_main(spec: str, out: str) -> int:
    """Inside the child: run the recipe, write metrics (or the error) as JSON."""
    from sctune import api

    recipe = json.loads(Path(spec).read_text())
    payload: dict[str, Any]
    try:
        result = api.run(recipe, progress=False, log=lambda m: print(m, flush=True))
        payload = {"ok": True, "metrics": result.metrics, "run_dir": str(result.run_dir)}
    except Exception as exc:
        import traceback

        traceback.print_exc()
        payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    Path(out).write_text(json.dumps(payload, default=str))
    return 0 if payload["ok"] else 1


def make_row(bench: str, cell: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    m = result.get("metrics") or {}
    test = m.get("test") or {}
    train = m.get("train") or {}
    params = m.get("parameters") or {}
    rec = cell["recipe"]
    adapters = rec["adapter"] if isinstance(rec["adapter"], list) else [rec["adapter"]]
    return {
        "bench": bench,
        "hash": cell["hash"],
        "status": "ok" if result.get("ok") else "failed",
        "error": result.get("error"),
        "labels": cell["labels"],
        "method": "+".join(a["name"] for a in adapters),
        "backbone": rec["backbone"]["name"],
        "dataset": cell_label(rec["data"]["path"]),
        "accuracy": test.get("accuracy"),
        "balanced_accuracy": test.get("balanced_accuracy"),
        "macro_f1": test.get("macro_f1"),
        "trainable_params": params.get("trainable"),
        "total_params": params.get("total"),
        "adapter_params": params.get("adapter"),
        "head_params": params.get("head"),
        "train_seconds": train.get("seconds", 0.0),
        "epochs_run": train.get("epochs_run", 0),
        "best_epoch": train.get("best_epoch"),
        "wall_seconds": result.get("wall_seconds"),
        "cpu_seconds": result.get("cpu_seconds"),
        "peak_rss_mb": result.get("peak_rss_mb"),
        "peak_gpu_mb": train.get("peak_gpu_memory_mb"),
        "n_cells": m.get("n_cells"),
        "run_dir": result.get("run_dir"),
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
        "recipe": rec,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", nargs="?", help="benchmark YAML with base: and grid:")
    ap.add_argument("--dry-run", action="store_true", help="expand and validate, run nothing")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only cells whose labels contain this text (repeatable: all must match)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dotted override for every cell (YAML value); changes the cell hashes",
    )
    ap.add_argument(
        "--results", help="results JSONL (default: the bench's 'results' or results/<name>.jsonl)"
    )
    ap.add_argument(
        "--runs-dir", help="where run directories go (default: runs/<name> next to the bench)"
    )
    ap.add_argument(
        "--timeout", type=float, default=None, help="seconds per run before it is killed"
    )
    ap.add_argument(
        "--rerun",
        action="store_true",
        help="run cells even when they have an ok row (the report keeps the newest row)",
    )
    ap.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(*args.child)
    if not args.bench:
        ap.error("the benchmark file is required")

    from sctune import api
    from sctune.core.errors import SctuneError

    bench_path = Path(args.bench).resolve()
    bench = yaml.safe_load(bench_path.read_text())
    bench.setdefault("name", bench_path.stem)
    bench_dir = bench_path.parent
    results = (
        Path(args.results)
        if args.results
        else bench_dir / bench.get("results", f"results/{bench['name']}.jsonl")
    )
    runs_dir = (
        Path(args.runs_dir)
        if args.runs_dir
        else bench_dir / bench.get("runs_dir", f"runs/{bench['name']}")
    )
    extra = []
    for item in args.set:
        key, _, text = item.partition("=")
        extra.append((key.strip(), yaml.safe_load(text)))

    registry = api.get_registry()
    cells = expand(bench, bench_dir, registry, extra)
    done = {r["hash"] for r in read_rows(results) if r.get("status") == "ok"}
    print(f"{bench['name']}: {len(cells)} cells; results -> {results}", flush=True)
    n_run = n_skip = n_done = n_fail = 0
    for i, cell in enumerate(cells, 1):
        label = ", ".join(f"{k}={v}" for k, v in cell["labels"].items())
        if args.only and not all(s in label for s in args.only):
            continue
        prefix = f"[{i}/{len(cells)}] {cell['hash']} {label}"
        if cell["hash"] in done and not args.rerun:
            print(f"{prefix}: done earlier, skipped", flush=True)
            n_done += 1
            continue
        try:
            api.load(cell["recipe"], registry=registry)
        except SctuneError as exc:
            reason = exc.render().strip().replace("\n", " | ")
            print(f"{prefix}: SKIPPED (does not validate): {reason}", flush=True)
            n_skip += 1
            if not args.dry_run:
                append_row(
                    results,
                    {
                        "bench": bench["name"],
                        "hash": cell["hash"],
                        "status": "skipped",
                        "labels": cell["labels"],
                        "error": reason,
                        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
                    },
                )
            continue
        if args.dry_run:
            print(f"{prefix}: valid", flush=True)
            continue
        run_dir = runs_dir / cell["hash"]
        print(f"{prefix}: running ...", flush=True)
        result = run_child(cell["recipe"], run_dir, runs_dir / f"{cell['hash']}.log", args.timeout)
        row = make_row(bench["name"], cell, result)
        append_row(results, row)
        n_run += 1
        if row["status"] == "ok":
            print(
                f"{prefix}: accuracy {row['accuracy']:.4f}, macro F1 {row['macro_f1']:.4f}, "
                f"train {row['train_seconds']:.1f} s, wall {row['wall_seconds']:.1f} s, "
                f"peak RSS {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        else:
            n_fail += 1
            print(
                f"{prefix}: FAILED ({row['error']}); log: {runs_dir / (cell['hash'] + '.log')}",
                flush=True,
            )
    print(
        f"ran {n_run} ({n_fail} failed), skipped {n_skip} invalid, {n_done} done earlier",
        flush=True,
    )
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
