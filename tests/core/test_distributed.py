"""DDP on 2 CPU processes (torchrun + accelerate, gloo): the code path of multi-GPU training.

Only rank 0 writes the run directory; validation metrics are gathered over both processes. Each
step's batch is split over the processes (so N processes take the steps one process takes) and
the head's BatchNorm normalises with the statistics of the whole batch: 2 processes reach what 1
process reaches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml

from sctune import api, testing


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=600, cwd=cwd, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_match_one(tiny_h5ad: Path, tmp_path: Path) -> None:
    registry = api.get_registry()
    rec = testing.example_recipe(registry, "scgpt", "lora", tmp_path, tiny_h5ad, epochs=3)
    # the cell_type head with its BatchNorm, a batch that splits evenly, no dropout anywhere:
    # what is left between 1 and 2 processes is summation order and the class-weighted loss
    # being averaged per process (far below seed noise: valid/loss differs by ~0.1 over seeds)
    rec["task"]["input_norm"] = "batch"
    rec["adapter"]["dropout"] = 0.0
    rec["trainer"].update({"device": "cpu", "batch_size": 16, "num_threads": 1})
    runs = {}
    for n in (1, 2):
        rec["output"]["dir"] = str(tmp_path / f"run{n}")
        path = tmp_path / f"recipe{n}.yaml"
        path.write_text(yaml.safe_dump(rec))
        launcher = (
            [shutil.which("torchrun"), "--nproc_per_node", "2", "-m", "sctune"]
            if n == 2
            else [sys.executable, "-m", "sctune"]
        )
        _run([*launcher, "run", str(path), "-q"], tmp_path)  # type: ignore[list-item]
        runs[n] = tmp_path / f"run{n}"
    info = json.loads((runs[2] / "env.json").read_text())
    assert info["num_processes"] == 2
    assert "MULTI_CPU" in info["distributed_type"]
    logs = {
        n: [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
        for n, d in runs.items()
    }
    assert len(logs[2]) == 3  # written once (rank 0), one line per epoch
    assert not list(Path(tmp_path).glob("sctune-rank*"))
    m1, m2 = (json.loads((d / "metrics.json").read_text())["test"] for d in runs.values())
    for one, two in zip(logs[1], logs[2], strict=True):
        assert one["lr"] == pytest.approx(two["lr"])  # the same number of steps
        assert one["valid/loss"] == pytest.approx(two["valid/loss"], abs=0.02), (logs, m1, m2)
    assert m1["accuracy"] == pytest.approx(m2["accuracy"], abs=0.05), (m1, m2)
    p1, p2 = (ad.read_h5ad(d / "predictions.h5ad") for d in runs.values())
    agree = (
        p1.obs["sctune_prediction"].to_numpy(str) == p2.obs["sctune_prediction"].to_numpy(str)
    ).mean()
    drift = float(np.abs(p1.obsm["X_sctune"] - p2.obsm["X_sctune"]).max())
    assert agree >= 0.95 and drift < 0.05, (agree, drift, logs)


def test_batch_size_that_does_not_split_is_refused() -> None:
    from sctune.core.errors import RecipeError
    from sctune.core.trainer import _check_split

    _check_split(16, 2)
    with pytest.raises(RecipeError, match="trainer.batch_size: 15 cells cannot be split") as e:
        _check_split(15, 2)
    assert "e.g. 16" in str(e.value.hint)


def test_global_batchnorm_is_batchnorm_outside_ddp() -> None:
    import torch

    from sctune.core.trainer import GlobalBatchNorm1d, globalise_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    plain = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    plain.load_state_dict(net.state_dict())
    assert globalise_batchnorm(net) == 1 and isinstance(net[0], GlobalBatchNorm1d)
    assert set(net.state_dict()) == set(plain.state_dict())
    x = torch.randn(8, 4)
    assert torch.equal(net(x), plain(x))
    assert torch.equal(net[0].running_var, plain[0].running_var)
