"""Integration benchmark: pancreas_xin + pancreas_wang (two studies) with batch_correction.

Builds the combined h5ad from ../shared/data (gene intersection, obs["batch"] = study), then runs
a small RANDOMLY INITIALISED scGPT-architecture model with each adapter and prints the test
table: sctune's embedding vs the uncorrected PCA of log-normalised HVGs vs Harmony, same cells.

    python benchmarks/integration.py [--adapters gene_encoder_prompt lora] [--epochs 5]

Until the engine passes the expression matrix to tasks, this script hands it over the way
tests/tasks/test_batch_correction.py does (GEPC and the references need it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def combined(out: Path) -> Path:
    xin = ad.read_h5ad(SHARED / "pancreas_xin_scclassify_subset.h5ad")
    wang = ad.read_h5ad(SHARED / "pancreas_wang_scclassify_subset.h5ad")
    genes = [g for g in xin.var_names if g in set(wang.var_names)]
    xin, wang = xin[:, genes].copy(), wang[:, genes].copy()
    xin.obs["batch"], wang.obs["batch"] = "xin", "wang"
    both = ad.concat([xin, wang], join="inner", index_unique="-")
    both.obs = both.obs[["cell_type", "batch"]]
    keep = np.asarray((both.X > 0).sum(axis=1)).ravel() > 0
    both[keep].copy().write_h5ad(out)
    return out


def expression_handover() -> None:
    import sctune.core.runner as runner
    from sctune.tasks.batch_correction.plugin import BatchCorrectionTask

    seen: dict = {}
    load, prepare, targets = (
        runner.load_data,
        BatchCorrectionTask.prepare,
        BatchCorrectionTask.targets,
    )

    def load_data(*a, **k):
        data = load(*a, **k)
        seen["e"] = data.expression
        return data

    def prepare_with(self, labels, split, config, *, obs=None, expression=None):
        return prepare(self, labels, split, config, obs=obs, expression=seen.get("e"))

    def targets_with(self, labels, prepared, *, obs=None, expression=None):
        e = seen.get("e")
        e = e if e is not None and obs is not None and len(obs) == len(e.cell_ids) else None
        return targets(self, labels, prepared, obs=obs, expression=e)

    runner.load_data = load_data
    BatchCorrectionTask.prepare, BatchCorrectionTask.targets = prepare_with, targets_with


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapters", nargs="+", default=["gene_encoder_prompt", "lora"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default="runs/integration")
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent")
        return 0
    expression_handover()
    from sctune import api

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = combined(out / "pancreas_xin_wang.h5ad")
    rows = []
    for adapter in args.adapters:
        start = time.perf_counter()
        result = api.run(
            "scgpt/real_gene_encoder_prompt_batch_correction",
            [
                f"data.path={data.resolve()}",
                "backbone.checkpoint=null",
                "backbone.embsize=64",
                "backbone.nheads=4",
                "backbone.d_hid=128",
                "backbone.nlayers=4",
                "backbone.dropout=0.0",
                "backbone.max_seq_len=1001",
                f"adapter={{name: {adapter}}}",
                f"trainer.epochs={args.epochs}",
                "trainer.optimizer.lr=1.0e-3",
                "trainer.device=cpu",
                "trainer.num_threads=2",
                f"output.dir={out / adapter}",
                "output.overwrite=true",
            ],
            progress=False,
            log=lambda m: None,
        )
        test = result.metrics["test"]
        rows.append((adapter, time.perf_counter() - start, test))
        print(adapter, json.dumps(test, default=str), flush=True)
    print("\n| method | embedding | bio | batch | total | iLISI | kBET | NMI | ARI | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for adapter, secs, test in rows:
        for emb in ("sctune", "pca", "harmony"):
            m = test.get(emb)
            if not m:
                continue
            f = lambda k, m=m: "-" if m.get(k) is None else f"{m[k]:.3f}"  # noqa: E731
            print(
                f"| {adapter} | {emb} | {f('bio')} | {f('batch')} | {f('total')} | {f('ilisi')} "
                f"| {f('kbet')} | {f('nmi')} | {f('ari')} | {secs:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
