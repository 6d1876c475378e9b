"""Which cells made a checkpoint, and whether a later run tests on them.

A run whose task exports its backbone (pretraining) writes ``pretraining_cells.json`` next to
the checkpoint: the run's split (the same format as a run's ``split.json``, so
``data.split.file`` accepts it), whose ``train`` cells trained the weights, whose ``valid`` cells
chose the epoch and whose ``test`` cells never touched them. A later run whose backbone options
point into such a folder compares its own test cells with the checkpoint's train and valid
cells: test metrics on cells the checkpoint was pretrained on are transductive, and the run says
so (a warning, and ``metrics.json`` -> ``pretraining_cells``).

Cells are matched by cell id (obs name) only when the two runs read a data file of the same
name (the built-in datasets count as one: the same 700 cells): 10x barcodes repeat across
experiments, so ids alone would raise false alarms.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PRETRAINING_CELLS = "pretraining_cells.json"

NOTE = (
    "the cells of the run that wrote this checkpoint: 'train' trained it, 'valid' chose its "
    "epoch, 'test' never touched it. A run scoring on 'train' or 'valid' cells is transductive; "
    "data.split.file=<this file> reuses this split"
)


def write(out_dir: Path, split_file: Path) -> None:
    """Copy the pretraining run's split into the exported checkpoint folder."""
    payload = json.loads(split_file.read_text())
    (out_dir / PRETRAINING_CELLS).write_text(json.dumps({"note": NOTE, **payload}, indent=1))


def _dataset_names(path: Any) -> set[str]:
    """File names of a recipe's ``data.path`` (a string, a list, or a name -> path mapping)."""
    if isinstance(path, dict):
        items = list(path.values())
    elif isinstance(path, list | tuple):
        items = list(path)
    else:
        items = [path]
    from sctune.core.data import BUILTIN_CELLS

    return {BUILTIN_CELLS.get(str(p), Path(str(p)).name) for p in items if p is not None}


def find(options: dict[str, Any]) -> Path | None:
    """The ``pretraining_cells.json`` of the checkpoint a backbone's options point at: in a
    folder option, or beside a file option."""
    for value in options.values():
        if not isinstance(value, str | Path) or not str(value):
            continue
        path = Path(value)
        try:
            candidate = (
                path / PRETRAINING_CELLS if path.is_dir() else path.parent / PRETRAINING_CELLS
            )
            if path.exists() and candidate.is_file():
                return candidate
        except OSError:
            continue
    return None


def overlap(
    options: dict[str, Any], data_path: Any, cell_ids: Sequence[str], test: np.ndarray
) -> dict[str, Any] | None:
    """How many of this run's test cells pretrained the checkpoint (``None``: no record)."""
    found = find(options)
    if found is None:
        return None
    try:
        record = json.loads(found.read_text())
    except (OSError, ValueError):
        return None
    shared = _dataset_names(record.get("dataset")) & _dataset_names(data_path)
    seen = {str(c) for part in ("train", "valid") for c in record.get(part, [])}
    hits = sum(1 for i in test if str(cell_ids[int(i)]) in seen) if shared else 0
    return {
        "record": str(found),
        "same_data_file": sorted(shared),
        "test_cells": int(len(test)),
        "test_cells_pretrained_on": int(hits),
    }
