"""output.overwrite never loses data: staged writes, replace on success, only sctune's folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sctune import api
from sctune.core import rundir
from sctune.core.errors import SctuneError

FAST = [
    "data.max_cells=100",
    "task.min_class_cells=1",
    "trainer.epochs=0",
    "output.plots=false",
    "output.predictions=false",
]


def _run(out: Path, *extra: str, **kw):
    return api.run(
        "quickstart",
        [*FAST, f"output.dir={out}", *extra],
        progress=False,
        log=lambda m: None,
        **kw,
    )


def test_a_finished_run_is_marked_complete(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(out)
    assert json.loads((out / rundir.MARKER).read_text())["status"] == "complete"
    assert rundir.describe(out) == "complete"
    assert not rundir.partial_path(out).exists()


def test_overwrite_refuses_a_folder_sctune_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(SctuneError, match="not an sctune run directory"):
        _run(out, "output.overwrite=true")
    assert (out / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrite_keeps_the_users_previous_folder_and_replaces_only_on_success(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    _run(out)
    before = (out / "adapter.json").read_bytes()
    mine = tmp_path / "run.previous"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")

    # a run that fails (after the old run was found) leaves the old run exactly as it was
    with pytest.raises(SctuneError, match="label_column"):
        _run(out, "output.overwrite=true", "data.label_column=nope")
    assert (out / "adapter.json").read_bytes() == before
    assert not rundir.partial_path(out).exists()  # nothing half-written

    _run(out, "output.overwrite=true", "seed=1")
    assert (out / "adapter.json").read_bytes() != before
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.previous"]


def test_without_overwrite_an_existing_run_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(out)
    with pytest.raises(SctuneError, match="already exists") as info:
        _run(out)
    assert "output.overwrite=true" in (info.value.hint or "")


def test_an_interrupted_partial_folder_is_not_silently_replaced(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stage = rundir.partial_path(out)
    stage.mkdir()
    (stage / "data.bin").write_text("x")  # not sctune's: no marker
    with pytest.raises(SctuneError, match="not written by sctune"):
        _run(out, "output.overwrite=true")
    assert (stage / "data.bin").exists()
