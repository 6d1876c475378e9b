"""``sctune bench --jobs 2``: cells in parallel child processes (peak memory per cell), and a
failing cell is reported without stopping the others."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def test_parallel_children_and_a_failed_cell(tmp_path: Path, make_grid, cli, registry):
    grid = make_grid(
        tmp_path,
        seeds=[0, 1],
        methods={},
        baselines={"per_backbone": ["head"], "n_hvg": 100, "n_pcs": 10},
        report={"umap": False},
        stats={"compare_to": ["logreg"], "bootstrap": 200},
    )
    out = tmp_path / "out"
    # seed 1's saved split names cells the data does not have: its cell fails at run time
    bad = out / "splits" / "tiny" / "seed-1.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"train": ["x1", "x2"], "valid": ["x3"], "test": ["x4"]}))
    res = cli("bench", str(grid), "--jobs", "2", "--out", str(out), "-q", registry=registry)
    assert res.code == 1, res
    assert "cell_type__tiny__scgpt__head__s1: FAILED" in res.out
    assert "failed 1" in res.out and "ran 1," in res.out
    ok = json.loads((out / "cells" / "cell_type__tiny__scgpt__head__s0.json").read_text())
    assert ok["status"] == "ok" and ok["peak_rss_mb"] > 100 and ok["cpu_seconds"] > 0
    failed = json.loads((out / "cells" / "cell_type__tiny__scgpt__head__s1.json").read_text())
    assert failed["status"] == "failed" and "data.split.file" in failed["error"]
    assert "data.split.file" in (out / failed["log"]).read_text()
    table = pd.read_csv(out / "results" / "table.csv")
    assert table.set_index("cell").status["cell_type__tiny__scgpt__head__s1"] == "failed"
    md = (out / "results" / "results.md").read_text()
    assert "## Cells that did not finish" in md and "cell_type__tiny__scgpt__head__s1" in md
