"""Integration benchmark: every trained method on a real two-batch setting, next to references.

Settings (from ../shared/data, read in place through sctune's multi-file input; the data layer
joins the files on their common genes and names each cell's batch after its file):

- ``pancreas``: pancreas_xin + pancreas_wang (two studies, log-normalised, shared cell types);
- ``pbmc``: pbmc3k_seurat_labeled + zheng_sorted_pbmc_facs (two PBMC experiments; symbols vs
  Ensembl ids, mapped by the data layer; their label sets differ, so bio metrics compare
  9 Seurat types with 10 sorted populations).

Each method runs the shipped ``scgpt/small_lora_batch_correction`` recipe (a small RANDOMLY
INITIALISED scGPT-architecture model; GEP + GEPC + ECS + DAR) with the adapter swapped in, and the
test table shows sctune's embedding next to the uncorrected PCA of log-normalised HVGs and Harmony
on the same test cells.

    python benchmarks/integration.py --setting pancreas --epochs 3
    python benchmarks/integration.py --setting pbmc --max-cells 2000 --methods lora
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SETTINGS = {
    "pancreas": {
        "xin": "pancreas_xin_scclassify_subset.h5ad",
        "wang": "pancreas_wang_scclassify_subset.h5ad",
    },
    "pbmc": {"pbmc3k": "pbmc3k_seurat_labeled.h5ad", "zheng": "zheng_sorted_pbmc_facs.h5ad"},
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="pancreas")
    ap.add_argument("--methods", default=None, help="comma list; default: every trained adapter")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-cells", type=int, default=None)
    ap.add_argument("--out", default="runs/integration")
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent")
        return 0
    from sctune import api

    registry = api.get_registry()
    methods = (
        args.methods.split(",")
        if args.methods
        else [n for n in registry.names("adapter") if registry.get("adapter", n).cls.trains]
    )
    files = ", ".join(f"{k}: {SHARED / v}" for k, v in SETTINGS[args.setting].items())
    out = Path(args.out) / args.setting
    rows = []
    for method in methods:
        overrides = [
            f"data.path={{{files}}}",
            f"adapter={{name: {method}}}",
            f"trainer.epochs={args.epochs}",
            "trainer.num_threads=2",
            "task.n_hvg=1200",
            f"output.dir={out / method}",
            "output.overwrite=true",
        ]
        if args.max_cells:
            overrides.append(f"data.max_cells={args.max_cells}")
        start = time.perf_counter()
        result = api.run(
            "scgpt/small_lora_batch_correction",
            overrides,
            registry=registry,
            progress=False,
            log=lambda m: None,
        )
        test = result.metrics["test"]
        params = result.metrics["parameters"]["trainable"]
        rows.append((method, params, time.perf_counter() - start, test))
        print(method, json.dumps(test, default=str), flush=True)
    print(
        "\n| method | trainable | embedding | bio | batch | total | iLISI | kBET | NMI | ARI "
        "| wall s |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    shown_refs = False
    for method, params, secs, test in rows:
        for emb in ("sctune", "pca", "harmony"):
            m = test.get(emb)
            if not m or (emb != "sctune" and shown_refs):
                continue
            name = method if emb == "sctune" else "-"

            def f(k: str, m: dict = m) -> str:
                return "-" if m.get(k) is None else f"{m[k]:.3f}"

            print(
                f"| {name} | {params:,} | {emb} | {f('bio')} | {f('batch')} | {f('total')} "
                f"| {f('ilisi')} | {f('kbet')} | {f('nmi')} | {f('ari')} | {secs:.0f} |"
            )
        shown_refs = True
    (out / "summary.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
