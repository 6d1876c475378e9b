"""Would a self-pretrained checkpoint help the quickstart? Random vs pretrained, same splits.

1. (``--pretrain``) Writes pbmc3k_seurat_labeled and zheng_sorted_pbmc_facs from ../shared/data
   restricted to the quickstart's 765 genes (scanpy's pbmc68k_reduced; symbols in var_names,
   counts in X, the full library size in ``obs['n_counts']``) and pretrains
   ``scgpt/pretrain_small`` on both files pooled (6,512 PBMCs; none of them is a pbmc68k cell).
   Its ``pretrained/pretraining_cells.json`` records which cells trained it. This is how the
   shipped ``builtin:pbmc_small`` (the quickstart's checkpoint) was made.
2. Runs the quickstart recipe for each seed and method in three set-ups, on the SAME split per
   seed (the recipe's seed draws it):
   - ``pretrained``: the checkpoint (default: the shipped ``builtin:pbmc_small``), loaded with
     the options its backbone.yaml lists (the quickstart as shipped);
   - ``random``: the same architecture and value style, randomly initialised
     (``backbone.checkpoint=null``; the like-for-like control);
   - ``previous``: the random-init quickstart of earlier releases (2 layers, d_hid 128, binned
     values, the ``<cls>`` embedding), tuned for a random backbone.
3. A logistic regression on the 765 log-normalised genes of the same split (the ceiling a
   linear model reaches on these labels).

Prints a markdown table (macro F1 mean +- sd over the seeds) to paste into docs/results.md.

    python benchmarks/quickstart_checkpoint.py --seeds 0,1,2,3,4      # the shipped checkpoint
    python benchmarks/quickstart_checkpoint.py --pretrain --out runs/qs_ckpt   # rebuild it first
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from sctune import api

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
POOL = {  # file in ../shared/data -> the var column with gene symbols (None: var_names)
    "pbmc3k_seurat_labeled.h5ad": None,
    "zheng_sorted_pbmc_facs.h5ad": "gene_symbol",
}


def write_pool(out: Path) -> list[Path]:
    """The pretraining files: each shared PBMC file over the quickstart's genes."""
    import anndata as ad
    import scanpy as sc

    genes = set(sc.datasets.pbmc68k_reduced().raw.var_names)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, column in POOL.items():
        a = ad.read_h5ad(SHARED / name)
        a.obs["n_counts"] = np.asarray(a.X.sum(axis=1)).ravel().astype(np.float64)
        symbols = a.var_names.to_series() if column is None else a.var[column].astype(str)
        a = a[:, symbols.isin(genes).to_numpy()].copy()
        a.var_names = symbols[symbols.isin(genes)].to_numpy()
        a.var = a.var[[]]
        a.obs = a.obs[["cell_type", "n_counts"]]
        path = out / name  # the shared file's own name: the record then names the source
        a.write_h5ad(path)
        written.append(path)
    return written


def pretrain(out: Path, epochs: int, extra: list[str]) -> Path:
    files = write_pool(out / "data")
    overrides = [
        f"data.path=[{', '.join(map(str, files))}]",
        f"trainer.epochs={epochs}",
        "trainer.optimizer.lr=1e-3",  # 4,557 training cells: 1e-3 kept improving for 12 epochs
        f"output.dir={out / 'pretrain'}",
        "output.overwrite=true",
        *extra,
    ]
    start = time.perf_counter()
    res = api.run("scgpt/pretrain_small", overrides, progress=True)
    test = {k: v for k, v in res.metrics["test"].items() if k != "export"}
    folder = res.run_dir / "pretrained"
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"pretrained in {time.perf_counter() - start:.0f} s, {size / 1e6:.1f} MB: {test}")
    print(res.metrics["test"]["export"]["reload"])
    return folder


def checkpoint_options(folder: Path) -> list[str]:
    """The overrides that load ``folder`` (its backbone.yaml, if any; paths relative to the
    folder), plus the architecture keys the quickstart sets, taken from its args.json."""
    out = [f"backbone.checkpoint={folder}"]
    if (folder / "backbone.yaml").is_file():
        exported = yaml.safe_load((folder / "backbone.yaml").read_text())["backbone"]
        for key, value in exported.items():
            if key in ("name", "checkpoint"):
                continue
            if isinstance(value, str) and (folder / value).exists():
                value = (folder / value).resolve()
            out.append(f"backbone.{key}={value}")
    args = json.loads((folder / "args.json").read_text())
    out += [f"backbone.{k}={args[k]}" for k in ("embsize", "nheads", "d_hid", "nlayers")]
    return out


def same_shape_random(folder: Path) -> list[str]:
    """A random backbone shaped and fed like the checkpoint (no weights)."""
    keep = [o for o in checkpoint_options(folder) if not o.startswith("backbone.checkpoint=")]
    return ["backbone.checkpoint=null", *keep]


PREVIOUS = [  # the random-init quickstart before builtin:pbmc_small shipped
    "backbone.checkpoint=null",
    "backbone.nlayers=2",
    "backbone.d_hid=128",
    "backbone.value_style=binned",
    "backbone.pooling=cls",
]


def hvg_logreg(run_dir: Path) -> float:
    """Logistic regression on the quickstart's 765 log-normalised genes, on the run's split."""
    import scanpy as sc
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    a = sc.datasets.pbmc68k_reduced()
    X = a.raw.X
    y = a.obs["bulk_labels"].astype(str).to_numpy()
    idx = {c: i for i, c in enumerate(a.obs_names)}
    split = json.loads((run_dir / "split.json").read_text())
    tr = np.array([idx[c] for c in split["train"]])
    te = np.array([idx[c] for c in split["test"]])
    model = LogisticRegression(max_iter=3000, class_weight="balanced").fit(X[tr], y[tr])
    return float(f1_score(y[te], model.predict(X[te]), average="macro"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/quickstart_checkpoint"))
    ap.add_argument("--pretrain", action="store_true", help="step 1 first")
    ap.add_argument(
        "--checkpoint",
        default="builtin:pbmc_small",
        help="a pretrained/ folder, or a shipped builtin:<name> (default: the quickstart's)",
    )
    ap.add_argument("--epochs", type=int, default=12, help="pretraining epochs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="zero_shot,head,gene_encoder_prompt")
    ap.add_argument("--setups", default="pretrained,random,previous")
    ap.add_argument("--pretrain-set", action="append", default=[], help="pretraining override")
    ap.add_argument("--set", action="append", default=[], help="override for every quickstart run")
    args = ap.parse_args()
    from sctune.backbones.scgpt.checkpoints import resolve

    if args.pretrain:
        args.checkpoint = pretrain(args.out, args.epochs, args.pretrain_set)
    folder = Path(str(resolve(args.checkpoint))).resolve()
    setups = {
        "pretrained": checkpoint_options(folder),
        "random": same_shape_random(folder),
        "previous": PREVIOUS,
    }
    chosen = args.setups.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    rows, ceiling = [], {}
    for seed in seeds:
        for method in methods:
            for setup in chosen:
                run_dir = args.out / f"{setup}-{method}-{seed}"
                overrides = [
                    f"seed={seed}",
                    f"adapter={{name: {method}}}",
                    f"output.dir={run_dir}",
                    "output.overwrite=true",
                    "output.plots=false",
                    *setups[setup],
                    *args.set,
                ]
                start = time.perf_counter()
                res = api.run("quickstart", overrides, progress=False, log=lambda m: None)
                row = {
                    "seed": seed,
                    "method": method,
                    "setup": setup,
                    "macro_f1": res.metrics["test"]["macro_f1"],
                    "accuracy": res.metrics["test"]["accuracy"],
                    "pretraining_cells": res.metrics["test"].get("pretraining_cells"),
                    "seconds": round(time.perf_counter() - start, 1),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                if seed not in ceiling:
                    ceiling[seed] = hvg_logreg(res.run_dir)
    (args.out / "rows.json").write_text(json.dumps({"rows": rows, "logreg": ceiling}, indent=1))

    def cell(values: list[float]) -> str:
        return (
            f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}"
            if len(values) > 1
            else (f"{values[0]:.3f}")
        )

    print(f"\n| macro F1 ({len(seeds)} seeds) | " + " | ".join(chosen) + " |")
    print("|---|" + "---|" * len(chosen))
    for method in methods:
        line = [
            cell([r["macro_f1"] for r in rows if r["method"] == method and r["setup"] == s])
            for s in chosen
        ]
        print(f"| {method} | " + " | ".join(line) + " |")
    print(f"| logistic regression on the 765 genes | {cell(list(ceiling.values()))} |")


if __name__ == "__main__":
    main()
