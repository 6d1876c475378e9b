"""Interruption and resume: signals give shell exit codes, a killed run resumes bit for bit.

The reference is an uninterrupted run of the same recipe in this process. The interrupted run is
a real ``sctune run`` process, killed (SIGKILL, so nothing of it can clean up) at a random moment
after its first epoch checkpoint; ``--resume`` must then finish with the same weights, the same
predictions and the same metrics (wall-clock seconds aside).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from sctune import api, hookimpl, testing
from sctune.core import rundir

# dropout > 0 and a weighted sampler make the result depend on every RNG the trainer uses
OVERRIDES = [
    "data.max_cells=160",
    "task.min_class_cells=1",
    "backbone.checkpoint=null",  # a random 2-layer backbone: cheaper; resuming is the same
    "backbone.dropout=0.1",
    "backbone.nlayers=2",
    "task.sampler=weighted",
    "trainer.epochs=6",
    "trainer.batch_size=16",
    "trainer.early_stopping=null",
    "trainer.num_threads=1",
    "trainer.device=cpu",
    "output.plots=false",
]


def _strip_seconds(value):
    if isinstance(value, dict):
        return {
            k: _strip_seconds(v)
            for k, v in value.items()
            if k != "seconds" and not k.endswith("_seconds")  # timings, e.g. metric_seconds
        }
    if isinstance(value, list):
        return [_strip_seconds(v) for v in value]
    return value


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sctune", "run", "quickstart", *args, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_checkpoint(proc: subprocess.Popen, stage: Path, timeout: float = 120) -> None:
    ckpt = stage / rundir.CHECKPOINT_DIR / "last.pt"
    end = time.time() + timeout
    while not ckpt.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    api.run("quickstart", [*OVERRIDES, f"output.dir={out}"], progress=False, log=lambda m: None)
    return out


def test_sigkill_then_resume_equals_an_uninterrupted_run(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    stage = rundir.partial_path(out)
    proc = _cli(*OVERRIDES, f"output.dir={out}")
    _wait_for_checkpoint(proc, stage)
    time.sleep(random.uniform(0.0, 0.6))  # somewhere inside a later epoch
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and stage.is_dir()
    assert rundir.describe(stage) == "incomplete"  # marked running, but its process is gone

    # without --resume the interrupted run is neither ignored nor deleted
    with pytest.raises(rundir.RecipeError, match="stopped before it finished"):
        api.run("quickstart", [*OVERRIDES, f"output.dir={out}"], progress=False)
    lines: list[str] = []
    api.run(
        "quickstart",
        [*OVERRIDES, f"output.dir={out}"],
        progress=False,
        log=lines.append,
        resume=True,
    )
    assert not stage.exists() and out.is_dir()
    assert not (out / rundir.CHECKPOINT_DIR).exists()

    for name in ("adapter.safetensors", "head.safetensors", "backbone.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((reference / "metrics.json").read_text())
    assert _strip_seconds(got) == _strip_seconds(want)
    log_got = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    log_want = [json.loads(x) for x in (reference / "train_log.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in log_got] == [1, 2, 3, 4, 5, 6]
    assert _strip_seconds(log_got) == _strip_seconds(log_want)
    a, b = ad.read_h5ad(out / "predictions.h5ad"), ad.read_h5ad(reference / "predictions.h5ad")
    np.testing.assert_array_equal(a.obsm["X_sctune"], b.obsm["X_sctune"])


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_exit_with_shell_codes_and_keep_the_run(
    sig: signal.Signals, code: int, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    stage = rundir.partial_path(out)
    proc = _cli(*OVERRIDES, "trainer.epochs=50", f"output.dir={out}")
    _wait_for_checkpoint(proc, stage)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"interrupted by {sig.name}" in stderr
    assert "Traceback" not in stderr
    assert "--resume" in stdout
    assert rundir.describe(stage) == "interrupted"
    assert not out.exists()


def test_resume_with_another_recipe_is_refused(tmp_path: Path) -> None:
    registry = api.get_registry(extra=[("stop-after-first-epoch", _StopAfterFirstEpoch)])
    base = ["data.max_cells=100", "task.min_class_cells=1", "trainer.epochs=2"]
    base += ["output.plots=false", f"output.dir={tmp_path / 'run'}"]
    _StopAfterFirstEpoch.armed = True
    with pytest.raises(KeyboardInterrupt):
        api.run("quickstart", base, registry=registry, progress=False, log=lambda m: None)
    _StopAfterFirstEpoch.armed = False
    with pytest.raises(
        rundir.RecipeError, match=r"trainer\.optimizer\.lr: 0\.001 then, 0\.01 now"
    ):
        api.run("quickstart", [*base, "trainer.optimizer.lr=0.01"], resume=True, progress=False)
    assert rundir.describe(rundir.partial_path(tmp_path / "run")) in ("interrupted", "failed")


def test_resume_without_an_interrupted_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(rundir.RecipeError, match="no interrupted run"):
        api.run("quickstart", [f"output.dir={tmp_path / 'x'}"], resume=True, progress=False)


class _StopAfterFirstEpoch:
    """A plugin that interrupts a run as Ctrl-C would, right after its first epoch."""

    armed = True

    @staticmethod
    @hookimpl
    def sctune_after_epoch(run, epoch, metrics) -> None:
        if _StopAfterFirstEpoch.armed and epoch == 1:
            raise KeyboardInterrupt


def _resume_cases() -> list:
    """Every shipped recipe that runs offline with its own method, and every registered method
    on the quickstart (so new recipes and new adapters join)."""
    registry = api.get_registry()
    cases = []
    for name in api.recipes(registry):
        try:
            rec = api.load(name, registry=registry)
            api.validate(name, registry=registry, check_data=False)
        except Exception:  # needs a user's checkpoint (checked in test_roundtrip_recipes)
            continue
        cases.append(pytest.param(name, None, id=f"{name}-{rec.adapters[0].name}"))
    for adapter in registry.names("adapter"):
        if registry.get("adapter", adapter).cls.trains:
            cases.append(pytest.param("quickstart", adapter, id=f"quickstart-{adapter}"))
    return cases


@pytest.mark.parametrize(("recipe", "adapter"), _resume_cases())
def test_interrupted_after_an_epoch_resumes_to_the_same_result(
    recipe: str, adapter: str | None, tmp_path: Path
) -> None:
    registry = api.get_registry(extra=[("stop-after-first-epoch", _StopAfterFirstEpoch)])
    overrides = [
        "data.max_cells=100",
        *testing.light_task_overrides(registry, recipe),
        "trainer.epochs=2",
        "trainer.early_stopping=null",
        "trainer.num_threads=1",
        "trainer.device=cpu",
        "output.plots=false",
        *([f"adapter={{name: {adapter}}}"] if adapter else []),
    ]

    def run(out: Path, **kw):
        return api.run(
            recipe,
            [*overrides, f"output.dir={out}"],
            registry=registry,
            progress=False,
            log=lambda m: None,
            **kw,
        )

    _StopAfterFirstEpoch.armed = False
    ref = run(tmp_path / "ref").run_dir
    _StopAfterFirstEpoch.armed = True
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    assert rundir.describe(rundir.partial_path(tmp_path / "cut")) == "interrupted"
    _StopAfterFirstEpoch.armed = False
    cut = run(tmp_path / "cut", resume=True).run_dir
    for name in ("adapter.safetensors", "head.safetensors"):
        assert (cut / name).read_bytes() == (ref / name).read_bytes(), name
    got = json.loads((cut / "metrics.json").read_text())
    want = json.loads((ref / "metrics.json").read_text())
    assert _strip_seconds(got) == _strip_seconds(want)
    assert got["train"]["epochs_run"] == 2
