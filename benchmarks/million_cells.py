"""A million cells through ``sctune predict``: peak memory and cells/s on a synthetic counts h5ad.

Usage (repository root)::

    python benchmarks/million_cells.py                       # 1,000,000 cells x 2,000 genes
    python benchmarks/million_cells.py --cells 200000 --json out.json
    python benchmarks/million_cells.py --workdir /scratch/m  # keep the files (default: a temp dir)

1. Writes a synthetic raw-counts h5ad (``--cells`` x ``--genes``, about ``--nnz`` non-zero
   genes per cell, CSR) chunk by chunk with h5py, so writing it needs little memory. It lives in
   a temporary folder and is deleted afterwards: never commit it.
2. Trains a small run on 3,000 cells of the same genes (the scGPT backbone's tiny example
   checkpoint, 32 dims x 2 layers, gene_encoder_prompt, 2 epochs).
3. Runs ``sctune predict RUN QUERY -o OUT --chunk-size N`` in a child process and reports its
   peak resident memory (``os.wait4``) and wall time; checks the output (every cell annotated,
   ``X_sctune`` complete and finite). The target: peak RSS <= 4 GB at 1,000,000 cells.
4. With ``--train-backed``, trains the same recipe on the large file (``data.max_cells`` cells
   drawn from it) and reports that child's peak RSS too.
5. With ``--train-stream``, trains on EVERY cell of the large file read in chunks
   (``data.stream: true``): the split keeps ``--stream-train`` of the cells for training (so an
   epoch fits a CPU), 1 % for validation and the rest for test; the run tokenizes all cells to
   disk, embeds and scores all of them and writes predictions.h5ad (X copied chunk by chunk).
   Reports that child's peak RSS and wall time and checks predictions.h5ad (every cell, the
   same stored values as the file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def write_counts_h5ad(
    path: Path, n_cells: int, genes: list[str], nnz: int, *, seed: int = 0, chunk: int = 50_000
) -> int:
    """A CSR counts h5ad written in chunks; returns the number of stored values."""
    import anndata as ad
    import h5py
    import pandas as pd

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem  # type: ignore[no-redef]

    rng = np.random.default_rng(seed)
    n_genes = len(genes)
    # five "cell types", each with its own 100 marker genes drawn more often
    programs = rng.integers(0, n_genes, (5, 100))
    total = 0
    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        X = f.create_group("X")
        X.attrs.update(
            {
                "encoding-type": "csr_matrix",
                "encoding-version": "0.1.0",
                "shape": (n_cells, n_genes),
            }
        )
        data = X.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 20,))
        indices = X.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 20,))
        indptr = X.create_dataset("indptr", (n_cells + 1,), np.int64)
        indptr[0] = 0
        types = rng.integers(0, 5, n_cells)
        for lo in range(0, n_cells, chunk):
            hi = min(n_cells, lo + chunk)
            k = rng.poisson(nnz, hi - lo).clip(10, n_genes)
            rows = np.repeat(np.arange(hi - lo), k)
            cols = rng.integers(0, n_genes, len(rows))
            marker = rng.random(len(rows)) < 0.3
            cols[marker] = programs[types[lo + rows[marker]], rng.integers(0, 100, marker.sum())]
            key = np.unique(rows.astype(np.int64) * n_genes + cols)
            r, c = key // n_genes, (key % n_genes).astype(np.int32)
            counts = (1 + rng.geometric(0.4, len(key))).astype(np.float32)
            start = total
            total += len(key)
            data.resize((total,))
            indices.resize((total,))
            data[start:total] = counts
            indices[start:total] = c
            per_row = np.bincount(r, minlength=hi - lo)
            indptr[lo + 1 : hi + 1] = start + np.cumsum(per_row)
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical([f"type{t}" for t in types])},
            index=pd.Index([f"cell{i:07d}" for i in range(n_cells)]),
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index(genes)))
        for group in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            write_elem(f, group, {})
    del ad
    return total


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; its wall time, exit code and peak RSS (the child and its children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    return {
        "seconds": time.perf_counter() - t0,
        "exit": os.waitstatus_to_exitcode(status),
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--nnz", type=int, default=100, help="mean non-zero genes per cell")
    ap.add_argument("--chunk-size", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=512, help="predict's eval batch size")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    ap.add_argument("--train-backed", action="store_true", help="also train on the large file")
    ap.add_argument(
        "--train-stream", action="store_true", help="also train on every cell, data.stream"
    )
    ap.add_argument(
        "--stream-train", type=float, default=0.02, help="--train-stream: training fraction"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the runs")
    ap.add_argument("--skip-predict", action="store_true", help="only the training runs")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="sctune-million-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"cells": a.cells, "genes": a.genes, "chunk_size": a.chunk_size}
    try:
        import yaml

        from sctune import api, testing

        genes = [f"GENE{i}" for i in range(a.genes)]
        query = work / "million.h5ad"
        t0 = time.perf_counter()
        nnz = write_counts_h5ad(query, a.cells, genes, a.nnz)
        result.update(
            write_s=time.perf_counter() - t0, nnz=nnz, file_mb=query.stat().st_size / 2**20
        )
        print(
            f"wrote {query} ({a.cells:,} cells x {a.genes:,} genes, {nnz:,} values, "
            f"{result['file_mb']:,.0f} MB) in {result['write_s']:.0f} s",
            flush=True,
        )
        train = work / "train.h5ad"
        write_counts_h5ad(train, 3_000, genes, a.nnz, seed=1)
        registry = api.get_registry()
        rec = testing.example_recipe(
            registry, "scgpt", "gene_encoder_prompt", work, train, epochs=2, batch_size=64
        )
        rec["output"].update({"dir": str(work / "run"), "predictions": False, "plots": False})
        rec["data"]["label_column"] = "cell_type"
        rec["trainer"]["eval_batch_size"] = a.batch_size
        if a.threads:
            rec["trainer"]["num_threads"] = a.threads
        (work / "recipe.yaml").write_text(yaml.safe_dump(rec))
        run = measure([sys.executable, "-m", "sctune", "run", str(work / "recipe.yaml"), "-q"])
        if run["exit"] != 0:
            raise SystemExit(f"training the small run failed ({run})")
        if a.train_stream:
            result["train_stream"] = train_stream(a, rec, query, work, nnz)
        if a.skip_predict:
            return finish(a, work, result)
        out = work / "annotated.h5ad"
        cmd = [sys.executable, "-m", "sctune", "predict", str(work / "run"), str(query)]
        cmd += ["-o", str(out), "--chunk-size", str(a.chunk_size)]
        pred = measure(cmd)
        if pred["exit"] != 0:
            raise SystemExit(f"predict failed ({pred})")
        pred["cells_per_s"] = a.cells / pred["seconds"]
        result["predict"] = pred
        import h5py

        with h5py.File(out, "r") as f:
            emb = f["obsm/X_sctune"]
            rows = np.random.default_rng(0).choice(a.cells, 1000, replace=False)
            sample = emb[np.sort(rows)]
            result["output_ok"] = bool(
                emb.shape[0] == a.cells
                and np.isfinite(sample).all()
                and np.abs(sample).sum(1).min() > 0
                and len(f["obs/_index"]) == a.cells
            )
        print(
            f"predict: {a.cells:,} cells in {pred['seconds']:.0f} s = "
            f"{pred['cells_per_s']:,.0f} cells/s, peak RSS {pred['peak_rss_mb']:,.0f} MB "
            f"(chunk {a.chunk_size:,}, batch {a.batch_size}); output complete: "
            f"{result['output_ok']}",
            flush=True,
        )
        if a.train_backed:
            rec["data"].update({"path": str(query), "max_cells": 20_000})
            rec["output"]["dir"] = str(work / "run_big")
            (work / "recipe_big.yaml").write_text(yaml.safe_dump(rec))
            big = measure([sys.executable, "-m", "sctune", "run", str(work / "recipe_big.yaml")])
            result["train_backed"] = big
            print(f"train on the large file (20,000 cells drawn): {big}", flush=True)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return finish(a, work, result)


def finish(a: Any, work: Path, result: dict[str, Any]) -> int:
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    checks = []
    if "predict" in result:
        checks.append(result.get("output_ok") and result["predict"]["peak_rss_mb"] <= 4096)
    if "train_stream" in result:
        ts = result["train_stream"]
        checks.append(ts["exit"] == 0 and ts["output_ok"] and ts["peak_rss_mb"] <= 4096)
    return 0 if checks and all(checks) else 1


def train_stream(a: Any, rec: dict[str, Any], query: Path, work: Path, nnz: int) -> dict[str, Any]:
    """Train on every cell of ``query`` read in chunks; peak RSS, wall time, output checks."""
    import yaml

    big = json.loads(json.dumps(rec))
    big["data"].update(
        {
            "path": str(query),
            "stream": True,
            "chunk_size": a.chunk_size,
            "cache_dir": str(work / "cache"),
            "split": {"valid": 0.01, "test": round(0.99 - a.stream_train, 6)},
        }
    )
    big["trainer"].update({"epochs": 1, "batch_size": 64})
    big["output"].update({"dir": str(work / "run_stream"), "predictions": True})
    (work / "recipe_stream.yaml").write_text(yaml.safe_dump(big))
    res = measure([sys.executable, "-m", "sctune", "run", str(work / "recipe_stream.yaml"), "-q"])
    res["output_ok"] = False
    pred = work / "run_stream" / "predictions.h5ad"
    if res["exit"] == 0 and pred.is_file():
        import h5py

        with h5py.File(pred, "r") as f:
            emb = f["obsm/X_sctune"]
            rows = np.sort(np.random.default_rng(0).choice(a.cells, 1000, replace=False))
            sample = emb[rows]
            res["output_ok"] = bool(
                emb.shape[0] == a.cells
                and len(f["X/data"]) == nnz
                and np.isfinite(sample).all()
                and len(f["obs/_index"]) == a.cells
            )
        metrics = json.loads((work / "run_stream" / "metrics.json").read_text())
        res["test_metrics"] = metrics.get("test")
    res["cells_per_s"] = a.cells / res["seconds"]
    print(
        f"train (data.stream) on {a.cells:,} cells ({a.stream_train:.0%} training): "
        f"{res['seconds']:.0f} s, peak RSS {res['peak_rss_mb']:,.0f} MB, predictions.h5ad "
        f"complete: {res['output_ok']}",
        flush=True,
    )
    return res


if __name__ == "__main__":
    sys.exit(main())
