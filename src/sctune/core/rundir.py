"""Run directories that never lose data: staged writes, a status marker, replace-on-success.

A run writes into ``<dir>.partial`` beside its final place, with a marker file
(:data:`MARKER`) saying ``running`` (and the writer's pid), ``interrupted`` or ``failed``. Only
when the run succeeded is it moved into place: an existing run there is renamed aside first and
deleted last, so a failure at any point leaves the old run intact. ``output.overwrite`` replaces
only folders that sctune wrote (they carry the marker), never anything else, and never touches
names it did not create (a ``<dir>.previous`` you made stays). An interrupted run keeps its
``.partial`` folder and per-epoch checkpoint for ``sctune run RECIPE --resume``.

Torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sctune.core.errors import RecipeError

MARKER = "sctune-run.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "last.pt"  # inside CHECKPOINT_DIR, rewritten after every epoch
LEGACY_FILES = ("adapter.json", "recipe.resolved.yaml")  # runs written before the marker


@dataclass
class RunResult:
    """What a run returns: the run directory, final metrics and artifact paths.

    ``context`` is the engine's ``RunContext`` that the hooks saw.
    """

    run_dir: Path
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    context: Any = field(default=None, repr=False)


class Interrupted(BaseException):
    """Raised in the main thread when the process receives SIGTERM (SLURM, ``docker stop``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def handle_signals() -> None:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM :class:`Interrupted`, so a run stops cleanly.

    SIGINT's handler is installed explicitly because a process started in the background of a
    script inherits SIGINT as ignored, and an ignored Ctrl-C would let the run go on.
    """

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_marker(folder: Path, status: str, **extra: Any) -> None:
    payload = {**(read_marker(folder) or {}), "status": status, **extra}
    payload.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    if status == "running":
        payload["pid"] = os.getpid()
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, folder / MARKER)


def is_sctune_run(folder: Path) -> bool:
    """True for a folder sctune wrote: it has the marker (or both files of an older run)."""
    return (folder / MARKER).is_file() or all((folder / f).is_file() for f in LEGACY_FILES)


def has_checkpoint(folder: Path) -> bool:
    """True when at least one epoch finished and saved its checkpoint."""
    return (folder / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file()


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def describe(folder: Path) -> str:
    """``complete``, ``running (pid N)``, ``interrupted``, ``failed`` or ``incomplete``."""
    marker = read_marker(folder)
    if marker is None:
        return "complete" if is_sctune_run(folder) else "not an sctune run"
    status = marker.get("status", "incomplete")
    if status == "running":
        return f"running (pid {marker.get('pid')})" if _alive(marker.get("pid")) else "incomplete"
    return str(status)


def begin(out: Path, *, overwrite: bool, resume: bool, command: str) -> Path:
    """Check the target, then return the staging folder to write into (created or resumed).

    Raises :class:`RecipeError` (with the fix) before anything is touched when the target is in
    the way: an existing run without ``output.overwrite``, a folder sctune did not write, a run
    still in progress, an interrupted run without ``--resume``, or nothing to resume.
    """
    stage = partial_path(out)
    if out.exists() and not out.is_dir():
        raise RecipeError(
            f"output.dir: '{out}' is a file, not a folder",
            hint="choose another output.dir=..., or move the file away",
        )
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not resume:
        if not overwrite:
            raise RecipeError(
                f"output.dir: run directory '{out}' already exists and is not empty",
                hint="pass output.overwrite=true to replace it once the new run succeeds, or "
                "choose another output.dir=...",
            )
        if not is_sctune_run(out):
            raise RecipeError(
                f"output.dir: '{out}' is not an sctune run directory (no {MARKER}); "
                "output.overwrite only replaces runs that sctune wrote",
                hint="choose another output.dir=..., or move that folder away yourself",
            )
    if stage.exists():
        state = describe(stage)
        if not is_sctune_run(stage) and read_marker(stage) is None:
            raise RecipeError(
                f"output.dir: '{stage}' exists and was not written by sctune",
                hint="move it away; sctune stages runs in '<output.dir>.partial'",
            )
        if state.startswith("running"):
            raise RecipeError(
                f"output.dir: another sctune process is writing '{stage}' ({state})",
                hint="wait for it, or stop it first",
            )
        if resume:
            if not has_checkpoint(stage):
                raise RecipeError(
                    f"--resume: '{stage}' ({state}) has no checkpoint; no epoch had finished",
                    hint=f"start again with: {command} output.overwrite=true",
                )
            write_marker(stage, "running", resumed=time.strftime("%Y-%m-%dT%H:%M:%S"))
            return stage
        if not overwrite:
            raise RecipeError(
                f"output.dir: an earlier run of this recipe stopped before it finished "
                f"('{stage}', {state})",
                hint=f"continue it with: {command} --resume ; or start again with: "
                f"{command} output.overwrite=true",
            )
        shutil.rmtree(stage)
    elif resume:
        raise RecipeError(
            f"--resume: there is no interrupted run to continue ('{stage}' does not exist)",
            hint=f"run without --resume: {command}",
        )
    stage.mkdir(parents=True)
    write_marker(stage, "running")
    return stage


def commit(stage: Path, out: Path) -> None:
    """Move a finished run into place; an old run there is removed only after the swap."""
    shutil.rmtree(stage / CHECKPOINT_DIR, ignore_errors=True)
    write_marker(stage, "complete", pid=None, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.replaced-{os.getpid()}-{time.time_ns()}")
            out.rename(old)
        else:
            out.rmdir()
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def abandon(stage: Path, *, interrupted: bool, resumed: bool) -> None:
    """After a failure: keep an interrupted run that has a checkpoint (and any resumed run) for
    ``--resume``; remove anything else, so nothing half-written stays behind."""
    if resumed or (interrupted and has_checkpoint(stage)):
        write_marker(stage, "interrupted" if interrupted else "failed")
    else:
        shutil.rmtree(stage, ignore_errors=True)
