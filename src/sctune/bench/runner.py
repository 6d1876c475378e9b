"""Run a grid: shared splits, one recipe file per cell, idempotent and resumable execution.

The results folder (``--out``, default ``bench/<name>`` in the working directory)::

    grid.yaml            the grid as given          plan.json   cells, hashes, skipped cells
    env.json             versions (sctune, plugins, torch, sklearn, scipy, scib-metrics, ...)
    splits/<dataset>/seed-<s>.json   one split per dataset and seed, read by every cell
    recipes/<cell>.yaml  the exact recipe of each cell (``sctune run`` reruns it)
    runs/<cell>/         the run directories         logs/<cell>.log   each child's output
    cells/<cell>.json    status, wall time, peak memory, recipe hash (what makes reruns skip)
    baselines/<task>__<dataset>__s<seed>.json(.npz)  logistic regression, kNN, PCA, Harmony
    results/             table.csv/json, summary, comparisons, per-class F1, results.md, report.html

A cell counts as finished when ``cells/<cell>.json`` says ``ok`` for the same recipe hash and its
run directory holds ``metrics.json``; a rerun skips it. A cell whose ``runs/<cell>.partial``
survives an interruption is resumed (``sctune run --resume``); a failed cell is reported, does
not stop the others, and runs again next time.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sctune.bench.spec import Cell, Plan, expand, load_spec

Log = Callable[[str], None]


@dataclass
class BenchResult:
    """What :func:`run_bench` did: the results folder, per-cell outcomes and the report files."""

    out: Path
    plan: Plan
    ran: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    finished_earlier: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def plan_bench(grid: str | Path | dict[str, Any], registry: Any) -> Plan:
    """Load, validate and expand a grid (no data is read, nothing is written)."""
    spec, source, _ = load_spec(grid)
    return expand(spec, source, registry)


def run_bench(
    grid: str | Path | dict[str, Any],
    *,
    out: str | Path | None = None,
    jobs: int = 1,
    registry: Any = None,
    isolate: bool = True,
    only: Sequence[str] = (),
    report: bool = True,
    progress: bool = True,
    log: Log = print,
    timeout: float | None = None,
) -> BenchResult:
    """Run every unfinished cell of ``grid``, the baselines and the statistics; write the report.

    ``jobs`` cells run at once, each in its own process (``isolate=False`` runs them one after
    the other in this process: no per-cell peak memory, but no start-up cost). With CUDA
    devices visible, each running cell gets its own GPU and at most one cell runs per GPU.
    ``only`` keeps the cells whose id contains every given text.
    """
    from sctune import api

    start = time.perf_counter()
    registry = registry or api.get_registry()
    spec, source, raw = load_spec(grid)
    plan = expand(spec, source, registry)
    root = Path(out or spec.out or Path("bench") / spec.name).resolve()
    for name, why in plan.absent.items():
        log(f"dataset '{name}' skipped: {why} (optional dataset)")
    for s in plan.skipped:
        log(f"skipped {s['task']}/{s['dataset']}/{s['backbone']}/{s['method']}: {s['reason']}")
    if len(spec.seed_list) < spec.stats.min_seeds:
        log(
            f"warning: {len(spec.seed_list)} seed(s); confidence intervals need at least "
            f"{spec.stats.min_seeds} (stats.min_seeds)"
        )
    result = BenchResult(out=root, plan=plan)
    _write_setup(root, raw, plan)
    cells = [c for c in plan.cells if all(t in c.id for t in only)]
    write_splits(root, plan, log=log)
    for cell in plan.cells:
        write_cell_recipe(root, cell)
    todo: list[Cell] = []
    for cell in cells:
        if cell_finished(root, cell):
            result.finished_earlier.append(cell.id)
        else:
            todo.append(cell)
    n_resume = sum(partial_dir(root, c).is_dir() for c in todo)
    log(
        f"grid '{spec.name}': {len(plan.cells)} cells ({len(result.finished_earlier)} finished "
        f"earlier, {n_resume} to resume, {len(todo) - n_resume} to run), "
        f"{len(plan.skipped)} skipped; results -> {root}"
    )
    if isolate:
        _run_children(root, todo, jobs, result, progress=progress, log=log, timeout=timeout)
    else:
        _run_in_process(root, todo, registry, result, log=log)
    from sctune.bench import baselines

    baselines.compute_all(root, plan, log=log)
    _status_table(root, plan, log)
    if report:
        from sctune.bench import report as rep

        result.files = rep.write_report(root, plan, log=log)
    result.seconds = time.perf_counter() - start
    if result.failed:
        log(f"{len(result.failed)} cell(s) failed: " + ", ".join(sorted(result.failed)))
    return result


# ----------------------------------------------------------------------------- layout


def partial_dir(root: Path, cell: Cell) -> Path:
    return root / "runs" / f"{cell.id}.partial"


def run_dir(root: Path, cell: Cell) -> Path:
    return root / "runs" / cell.id


def split_file(root: Path, dataset: str, seed: int) -> Path:
    return root / "splits" / dataset / f"seed-{seed}.json"


def read_cell_record(root: Path, cell: Cell) -> dict[str, Any] | None:
    try:
        return dict(json.loads((root / "cells" / f"{cell.id}.json").read_text()))
    except (OSError, ValueError):
        return None


def cell_finished(root: Path, cell: Cell) -> bool:
    rec = read_cell_record(root, cell)
    return bool(
        rec
        and rec.get("status") == "ok"
        and rec.get("hash") == cell.hash
        and (run_dir(root, cell) / "metrics.json").is_file()
    )


def _write_setup(root: Path, raw: dict[str, Any], plan: Plan) -> None:
    from sctune.bench.report import versions

    root.mkdir(parents=True, exist_ok=True)
    (root / "grid.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    payload = {
        "name": plan.spec.name,
        "source": str(plan.source) if plan.source else None,
        "seeds": plan.spec.seed_list,
        "cells": [{"id": c.id, **c.coords, "hash": c.hash} for c in plan.cells],
        "skipped": plan.skipped,
        "absent_datasets": plan.absent,
        "datasets": plan.datasets,
        "tasks": plan.tasks,
        "methods": plan.methods,
    }
    (root / "plan.json").write_text(json.dumps(payload, indent=1, default=str))
    (root / "env.json").write_text(json.dumps(versions(), indent=1, default=str))


def load_dataset(data: dict[str, Any], seed: int) -> Any:
    """The dataset as sctune loads it for a run (same matrix choice, labels and cell ids)."""
    from sctune.core.data import load_data
    from sctune.core.recipe import DataConfig

    return load_data(DataConfig.model_validate(data), seed=seed)


def write_splits(root: Path, plan: Plan, *, log: Log = print) -> None:
    """One split per dataset and seed, with sctune's own splitter (what a run of that seed
    would draw); kept when it exists, so every cell and rerun reads the same cells."""
    from sctune.core.data import split_cells, write_split
    from sctune.core.recipe import DataConfig

    used = {c.dataset for c in plan.cells}
    for name in sorted(used):
        data = plan.datasets[name]
        cfg = DataConfig.model_validate(data)
        loaded = None
        for seed in plan.spec.seed_list:
            path = split_file(root, name, seed)
            if path.is_file():
                continue
            if loaded is None or cfg.max_cells:
                loaded = load_dataset(data, seed)
            split = split_cells(loaded.obs, loaded.labels, cfg.split, seed=seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_split(
                path,
                list(loaded.expression.cell_ids),
                split,
                dataset=name,
                seed=seed,
                method="bench",
            )
            log(
                f"split {name} seed {seed}: "
                + ", ".join(f"{k} {len(v)}" for k, v in split.items())
                + f" -> {path.relative_to(root)}"
            )


def write_cell_recipe(root: Path, cell: Cell) -> Path:
    """``recipes/<cell>.yaml``: the cell's recipe with paths relative to the results folder, so
    ``sctune run`` reruns it from any working directory and the folder can move."""
    recipe = json.loads(json.dumps(cell.recipe))  # a deep copy with plain types
    recipe["data"].setdefault("split", {})
    recipe["data"]["split"] = {"file": f"../splits/{cell.dataset}/seed-{cell.seed}.json"}
    recipe["output"] = {
        **(recipe.get("output") or {}),
        "dir": f"../runs/{cell.id}",
        "overwrite": True,
        "plots": False,
        "predictions": True,
    }
    recipe["name"] = cell.id
    path = root / "recipes" / f"{cell.id}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# sctune bench cell {cell.id} (recipe hash {cell.hash})\n#   rerun: sctune run {path}\n"
    )
    text = header + yaml.safe_dump(recipe, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def _record(root: Path, cell: Cell, **fields: Any) -> dict[str, Any]:
    rec = {
        "id": cell.id,
        **cell.coords,
        "hash": cell.hash,
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
        **fields,
    }
    path = root / "cells" / f"{cell.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    tmp.replace(path)
    return rec


def _prepare_cell(root: Path, cell: Cell) -> bool:
    """Before a cell runs: drop a stale partial run (another recipe); True = resume it."""
    partial = partial_dir(root, cell)
    if not partial.is_dir():
        return False
    try:
        started = json.loads((partial / "checkpoint" / "recipe.json").read_text())
    except (OSError, ValueError):
        started = None
    rec = read_cell_record(root, cell) or {}
    if rec.get("hash") not in (None, cell.hash) or started is None:
        shutil.rmtree(partial, ignore_errors=True)
        return False
    return True


# ----------------------------------------------------------------------------- execution


def _gpu_count() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # no torch build with CUDA
        return 0


def _summary(root: Path, cell: Cell) -> str:
    try:
        m = json.loads((run_dir(root, cell) / "metrics.json").read_text())
    except (OSError, ValueError):
        return ""
    test = m.get("test") or {}
    if "macro_f1" in test:
        return f"macro F1 {test['macro_f1']:.3f}"
    total = (test.get("sctune") or {}).get("total")
    return f"integration total {total:.3f}" if total is not None else ""


def _run_in_process(
    root: Path, todo: list[Cell], registry: Any, result: BenchResult, *, log: Log
) -> None:
    from sctune import api

    for i, cell in enumerate(todo, 1):
        resume = _prepare_cell(root, cell)
        _record(root, cell, status="running", resumed=resume)
        started = time.perf_counter()
        try:
            api.run(
                str(root / "recipes" / f"{cell.id}.yaml"),
                registry=registry,
                progress=False,
                resume=resume,
                log=lambda m: None,
            )
        except Exception as exc:
            msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            _record(root, cell, status="failed", error=str(msg).splitlines()[0], resumed=resume)
            result.failed[cell.id] = str(msg).splitlines()[0]
            log(f"[{i}/{len(todo)}] {cell.id}: FAILED ({result.failed[cell.id]})")
            continue
        wall = round(time.perf_counter() - started, 2)
        _record(root, cell, status="ok", wall_seconds=wall, peak_rss_mb=None, resumed=resume)
        (result.resumed if resume else result.ran).append(cell.id)
        log(
            f"[{i}/{len(todo)}] {cell.id}: {'resumed, ' if resume else ''}{_summary(root, cell)}, {wall:.1f} s"
        )


@dataclass
class _Child:
    cell: Cell
    proc: subprocess.Popen[bytes]
    started: float
    resume: bool
    gpu: int | None
    out: Path


def _spawn(root: Path, cell: Cell, gpu: int | None, threads: int | None) -> _Child:
    resume = _prepare_cell(root, cell)
    out = root / "cells" / f"{cell.id}.result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("MPLBACKEND", "Agg")
    cmd = [
        sys.executable,
        "-m",
        "sctune.bench.child",
        str(root / "recipes" / f"{cell.id}.yaml"),
        str(out),
    ]
    if resume:
        cmd.append("--resume")
    logf = root / "logs" / f"{cell.id}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    with logf.open("ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    _record(root, cell, status="running", resumed=resume, pid=proc.pid, gpu=gpu)
    return _Child(cell, proc, time.perf_counter(), resume, gpu, out)


def _reap(root: Path, child: _Child, status: int, usage: Any, result: BenchResult) -> str:
    wall = round(time.perf_counter() - child.started, 2)
    try:
        payload = json.loads(child.out.read_text())
    except (OSError, ValueError):
        payload = {
            "ok": False,
            "error": f"the cell's process exited with {os.waitstatus_to_exitcode(status)}",
        }
    child.out.unlink(missing_ok=True)
    # ru_maxrss: KiB on Linux, bytes on macOS
    rss = usage.ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)
    fields = {
        "wall_seconds": wall,
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(rss, 1),
        "resumed": child.resume,
        "gpu": child.gpu,
        "log": f"logs/{child.cell.id}.log",
    }
    cid = child.cell.id
    if payload.get("ok"):
        _record(root, child.cell, status="ok", **fields)
        (result.resumed if child.resume else result.ran).append(cid)
        return f"{cid}: {'resumed, ' if child.resume else ''}{_summary(root, child.cell)}, {wall:.1f} s"
    _record(root, child.cell, status="failed", error=payload.get("error"), **fields)
    result.failed[cid] = str(payload.get("error"))
    return f"{cid}: FAILED ({payload.get('error')}); log: {root / fields['log']}"


def _run_children(
    root: Path,
    todo: list[Cell],
    jobs: int,
    result: BenchResult,
    *,
    progress: bool,
    log: Log,
    timeout: float | None,
) -> None:
    if not todo:
        return
    gpus = _gpu_count() if jobs > 1 else 0
    if gpus:
        if jobs > gpus:
            log(f"{gpus} GPU(s) visible: running {gpus} cell(s) at a time, one per GPU")
        jobs = min(jobs, gpus)
    jobs = max(1, jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 and not gpus else None
    queue = list(todo)
    running: list[_Child] = []
    free_gpus = list(range(gpus))
    bar = _Progress(len(todo), progress, log)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                gpu = free_gpus.pop(0) if gpus else None
                running.append(_spawn(root, queue.pop(0), gpu, threads))
                bar.running([c.cell.id for c in running])
            time.sleep(0.2)
            for child in list(running):
                pid, status, usage = os.wait4(child.proc.pid, os.WNOHANG)
                if (
                    not pid
                    and timeout is not None
                    and time.perf_counter() - child.started > timeout
                ):
                    child.proc.kill()
                    pid, status, usage = os.wait4(child.proc.pid, 0)
                if not pid:
                    continue
                child.proc.returncode = os.waitstatus_to_exitcode(status)
                running.remove(child)
                if child.gpu is not None:
                    free_gpus.append(child.gpu)
                bar.done(_reap(root, child, status, usage, result))
                bar.running([c.cell.id for c in running])
    except BaseException:
        for child in running:  # SIGTERM: each child keeps its '.partial' run for a resume
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in running:
            try:
                child.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.proc.kill()
            _record(root, child.cell, status="interrupted", resumed=child.resume)
        raise
    finally:
        bar.close()


class _Progress:
    """A rich progress bar over the whole grid (plain lines when not a terminal)."""

    def __init__(self, total: int, enabled: bool, log: Log) -> None:
        self.log, self.n, self.total, self.bar = log, 0, total, None
        if enabled and sys.stdout.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("cells"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
            )
            self.task = self.bar.add_task("", total=total)
            self.bar.start()

    def running(self, ids: list[str]) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description="running: " + ", ".join(ids))

    def done(self, line: str) -> None:
        self.n += 1
        text = f"[{self.n}/{self.total}] {line}"
        if self.bar is not None:
            self.bar.console.print(text, highlight=False, markup=False)
            self.bar.advance(self.task)
        else:
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _status_table(root: Path, plan: Plan, log: Log) -> None:
    """The whole grid at a glance: per task/dataset/backbone/method, seeds ok / failed."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for cell in plan.cells:
        rec = read_cell_record(root, cell) or {}
        status = rec.get("status", "todo") if rec.get("hash") == cell.hash else "todo"
        groups.setdefault((cell.task, cell.dataset, cell.backbone, cell.method), []).append(status)
    lines = ["grid status (seeds ok/total):"]
    for (t, d, b, m), st in groups.items():
        bad = [s for s in st if s != "ok"]
        mark = "ok" if not bad else ", ".join(f"{bad.count(s)} {s}" for s in sorted(set(bad)))
        lines.append(f"  {t:<16} {d:<14} {b:<11} {m:<20} {st.count('ok')}/{len(st)}  {mark}")
    log("\n".join(lines))
