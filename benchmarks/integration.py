"""Integration benchmark: every trained method on a real two-batch setting, next to references.

Settings (from ../shared/data, read in place through sctune's multi-file input; the data layer
joins the files on their common genes and names each cell's batch after its file):

- ``pancreas``: pancreas_xin + pancreas_wang (two studies, log-normalised, shared cell types);
- ``pbmc``: pbmc3k_seurat_labeled + zheng_sorted_pbmc_facs (two PBMC experiments; symbols vs
  Ensembl ids, mapped by the data layer). Their label vocabularies differ, so the benchmark
  writes copies with a shared coarse label (B, CD4 T, CD8 T, CD14 Mono, NK; FCGR3A Mono, DC,
  Platelet and CD34+ on one side only) into the output folder and scores on that.

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
COARSE = {  # a common coarse label set for the PBMC pair (see ../shared/data/README.md)
    "Naive CD4 T": "CD4 T",
    "Memory CD4 T": "CD4 T",
    "CD14+ Mono": "CD14 Mono",
    "FCGR3A+ Mono": "FCGR3A Mono",
    "CD8 T": "CD8 T",
    "CD14+ Monocyte": "CD14 Mono",
    "CD19+ B": "B",
    "CD4+ T Helper2": "CD4 T",
    "CD4+/CD25 T Reg": "CD4 T",
    "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
    "CD4+/CD45RO+ Memory": "CD4 T",
    "CD56+ NK": "NK",
    "CD8+ Cytotoxic T": "CD8 T",
    "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
}


def coarse_copies(files: dict[str, Path], out: Path) -> dict[str, Path]:
    """The PBMC pair with an obs column ``coarse_label`` shared by both label vocabularies
    (pbmc3k's Seurat names, zheng's FACS populations), written under ``out``: without it every
    label sits in one batch only and the per-label batch metrics are undefined."""
    import anndata as ad

    out.mkdir(parents=True, exist_ok=True)
    copies = {}
    for key, path in files.items():
        a = ad.read_h5ad(path)
        a.obs["coarse_label"] = [COARSE.get(str(x), str(x)) for x in a.obs["cell_type"]]
        copies[key] = out / f"{key}.h5ad"
        a.write_h5ad(copies[key])
    return copies


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
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run")
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
    out = Path(args.out) / args.setting
    paths = {k: SHARED / v for k, v in SETTINGS[args.setting].items()}
    label = []
    if args.setting == "pbmc":
        paths = coarse_copies(paths, out / "data")
        label = ["data.label_column=coarse_label"]
    files = ", ".join(f"{k}: {v}" for k, v in paths.items())
    rows = []
    for method in methods:
        overrides = [
            f"data.path={{{files}}}",
            f"adapter={{name: {method}}}",
            *label,
            f"trainer.epochs={args.epochs}",
            f"trainer.num_threads={args.threads}",
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
