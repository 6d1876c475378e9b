"""DDP on 2 CPU processes (torchrun + accelerate, gloo): the code path of multi-GPU training.

Only rank 0 writes the run directory; validation metrics are gathered over both processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sctune import api, testing


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_cpu_ddp(tiny_h5ad: Path, tmp_path: Path) -> None:
    registry = api.get_registry()
    rec = testing.example_recipe(registry, "scgpt", "lora", tmp_path, tiny_h5ad, epochs=2)
    rec["output"]["dir"] = str(tmp_path / "run")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(rec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rec["trainer"]["device"] = "cpu"
    path.write_text(yaml.safe_dump(rec))
    cmd = [
        shutil.which("torchrun"),
        "--nproc_per_node",
        "2",
        "-m",
        "sctune",
        "run",
        str(path),
        "-q",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "run" / "env.json").read_text())
    assert info["num_processes"] == 2
    assert "MULTI_CPU" in info["distributed_type"]
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2  # written once (rank 0), one line per epoch
    assert not list(Path(tmp_path).glob("sctune-rank*"))
