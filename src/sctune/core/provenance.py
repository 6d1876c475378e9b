"""Which cells made a checkpoint, and whether a later run tests on them.

A run whose task exports its backbone (pretraining) writes ``pretraining_cells.json`` next to
the checkpoint: the run's split (the same format as a run's ``split.json``, so
``data.split.file`` accepts it), whose ``train`` cells trained the weights, whose ``valid`` cells
chose the epoch and whose ``test`` cells never touched them. A later run whose backbone options
point into such a folder compares its own test cells with the checkpoint's train and valid
cells: test metrics on cells the checkpoint was pretrained on are transductive, and the run says
so (a warning, and ``metrics.json`` -> ``pretraining_cells``).

Cells are compared by cell id (obs name) only when the run holds at least half of the record's
cells, or 5 % of them and a data file of the same name (the built-in datasets count as one: the
same 700 cells): 10x barcodes repeat across experiments, so a few shared ids mean nothing. Ids
that a pooled run prefixed with its batch name do not match the same cells read alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sctune.core.data import BUILTIN_CELLS
from sctune.core.recipe import data_files

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
    if path is None:
        return set()
    files = data_files(list(path) if isinstance(path, tuple) else path)
    items = [p for _, p in files] if files is not None else [str(path)]
    return {BUILTIN_CELLS.get(p, Path(p).name) for p in items}


def find(options: dict[str, Any]) -> Path | None:
    """The ``pretraining_cells.json`` of the checkpoint the backbone's ``checkpoint`` option
    points at: inside it (a folder) or beside it (a file). Other options (dictionaries, gene
    files borrowed from a run) do not say which weights are loaded, so they are not read."""
    value = options.get("checkpoint")
    if not isinstance(value, str | Path) or not str(value):
        return None
    path = Path(value)
    try:
        candidate = path / PRETRAINING_CELLS if path.is_dir() else path.parent / PRETRAINING_CELLS
        return candidate if path.exists() and candidate.is_file() else None
    except OSError:
        return None


SAME_CELLS = 0.5
"""Share of the record's cells found among a run's cell ids above which the run reads the same
cells whatever its file is called (two 10x experiments share well under 1 % of barcodes)."""
SAME_FILE_CELLS = 0.05
"""The share needed when the file names match too (a subsample of the same file)."""


def overlap(
    options: dict[str, Any], data_path: Any, cell_ids: Sequence[str], test: np.ndarray
) -> dict[str, Any] | None:
    """How many of this run's test cells pretrained the checkpoint (``None``: no record).

    ``test_cells_pretrained_on`` is ``None`` when the run's cells are not the record's (too few
    of the record's cell ids occur in the run, see :data:`SAME_CELLS`), i.e. not compared."""
    found = find(options)
    if found is None:
        return None
    try:
        record = json.loads(found.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    parts = {k: [str(c) for c in record.get(k, []) or []] for k in ("train", "valid", "test")}
    recorded = [c for ids in parts.values() for c in ids]
    ids = {str(c) for c in cell_ids}
    found_share = sum(c in ids for c in recorded) / max(len(recorded), 1)
    shared = _dataset_names(record.get("dataset")) & _dataset_names(data_path)
    compared = found_share >= SAME_CELLS or (bool(shared) and found_share >= SAME_FILE_CELLS)
    hits: int | None = None
    if compared:
        seen = set(parts["train"]) | set(parts["valid"])
        hits = sum(1 for i in test if str(cell_ids[int(i)]) in seen)
    return {
        "record": str(found),
        "same_data_file": sorted(shared),
        "record_cells_found": round(found_share, 4),
        "test_cells": int(len(test)),
        "test_cells_pretrained_on": hits,
    }
