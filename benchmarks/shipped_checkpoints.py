"""The shipped checkpoints (``builtin:pbmc_small`` of each backbone): how they were made, and
what they do for that backbone's small pbmc68k recipe against a random backbone, same splits.

1. (``--pretrain``) Writes pbmc3k_seurat_labeled and zheng_sorted_pbmc_facs from ../shared/data
   restricted to the 765 genes of scanpy's pbmc68k_reduced (as benchmarks/quickstart_checkpoint.py
   does for scGPT) and runs ``<backbone>/pretrain_small`` on both files pooled (6,512 PBMCs, none
   of them a pbmc68k cell) with the options each shipped checkpoint was made with (``MADE_WITH``).
   Its ``pretrained/`` folder is the checkpoint; ``pretraining_cells.json`` records the cells.
2. Runs the backbone's small recipe on pbmc68k_reduced (``RECIPE``) for each seed and method in
   three set-ups, on the SAME split per seed (the recipe's seed draws it):
   - ``pretrained``: ``backbone.checkpoint=<checkpoint>`` (default the shipped one), the sizes it
     decides filled in from it;
   - ``random``: the same architecture randomly initialised (the like-for-like control);
   - ``recipe``: the recipe as shipped (its own, smaller, random backbone).
3. A logistic regression on the 765 log-normalised genes of the same split (the linear ceiling).

Prints a markdown table (macro F1 mean +- sd over the seeds) to paste into docs/results.md.

    python benchmarks/shipped_checkpoints.py --backbone scbert --seeds 0,1,2
    python benchmarks/shipped_checkpoints.py --backbone geneformer --pretrain --out runs/gf_ckpt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from sctune import api

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart_checkpoint import hvg_logreg, write_pool

RECIPE = {
    "scgpt": "quickstart",
    "scbert": "scbert/small_gene_token_prompt_cell_type",
    "geneformer": "geneformer/small_lora_cell_type",
}
MADE_WITH = {  # the pretraining overrides of each shipped builtin:pbmc_small
    "scgpt": ["trainer.epochs=12", "trainer.optimizer.lr=1e-3"],
    "scbert": ["trainer.epochs=10", "backbone.mask_unexpressed=0.02"],
    "geneformer": [  # its own dictionary over the pooled genes, medians over its training cells
        "trainer.epochs=20",
        "backbone.token_dictionary=null",
        "backbone.gene_median_dictionary=null",
    ],
}
SIZES = {  # recipe keys the checkpoint decides, and how its folder records them
    "scgpt": {"embsize": "embsize", "nheads": "nheads", "d_hid": "d_hid", "nlayers": "nlayers"},
    "scbert": {"dim": "dim", "depth": "depth", "heads": "heads", "dim_head": "dim_head"},
    "geneformer": {
        "hidden_size": "hidden_size",
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "intermediate_size": "intermediate_size",
        "max_position_embeddings": "max_position_embeddings",
    },
}
FROM_CHECKPOINT = {"geneformer": ["token_dictionary", "gene_median_dictionary"]}


def pretrain(backbone: str, out: Path, extra: list[str]) -> Path:
    files = write_pool(out / "data")
    overrides = [
        f"data.path=[{', '.join(map(str, files))}]",
        *MADE_WITH[backbone],
        f"output.dir={out / 'pretrain'}",
        "output.overwrite=true",
        *extra,
    ]
    start = time.perf_counter()
    res = api.run(f"{backbone}/pretrain_small", overrides, progress=True)
    test = {k: v for k, v in res.metrics["test"].items() if k != "export"}
    folder = res.run_dir / "pretrained"
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"pretrained in {time.perf_counter() - start:.0f} s, {size / 1e6:.1f} MB: {test}")
    print(res.metrics["test"]["export"]["reload"])
    return folder


def sizes_of(backbone: str, checkpoint: str) -> dict[str, object]:
    """The sizes of ``checkpoint`` under the recipe's keys."""
    cls = api.get_registry().get("backbone", backbone).cls.config_cls
    cfg = cls(checkpoint=checkpoint)
    if backbone == "scbert":  # sizes are options (filled in from backbone.yaml)
        return {k: getattr(cfg, k) for k in SIZES[backbone]}
    shape_file = "args.json" if backbone == "scgpt" else "config.json"
    shape = json.loads((Path(str(cfg.checkpoint)) / shape_file).read_text())
    return {k: shape[v] for k, v in SIZES[backbone].items()}


def setups(backbone: str, checkpoint: str) -> dict[str, list[str]]:
    """The checkpoint's sizes are stated in both (a recipe may repeat what a checkpoint decides);
    its files (Geneformer's dictionaries) are left to it, or derived from the data when random."""
    sizes = [f"backbone.{k}={v}" for k, v in sizes_of(backbone, checkpoint).items()]
    files = [f"backbone.{k}=null" for k in FROM_CHECKPOINT.get(backbone, [])]
    return {
        "pretrained": [f"backbone.checkpoint={checkpoint}", *sizes, *files],
        "random": ["backbone.checkpoint=null", *sizes, *files],
        "recipe": [],
    }


def frozen_options(backbone: str, method: str) -> list[str]:
    """A method that trains nothing needs a cell embedding without fresh modules (scBERT's stem)."""
    registry = api.get_registry()
    if registry.get("adapter", method).cls.trains:
        return []
    free = registry.get("backbone", backbone).cls.parameter_free_options
    return [f"backbone.{k}={v}" for k, v in free.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", choices=sorted(RECIPE), required=True)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--pretrain", action="store_true", help="step 1 first")
    ap.add_argument("--checkpoint", default="builtin:pbmc_small")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=None, help="default: the recipe's own method")
    ap.add_argument("--setups", default="pretrained,random,recipe")
    ap.add_argument("--pretrain-set", action="append", default=[], help="pretraining override")
    ap.add_argument("--set", action="append", default=[], help="override for every run")
    args = ap.parse_args()
    out = args.out or Path(f"runs/shipped_{args.backbone}")
    recipe = RECIPE[args.backbone]
    if args.pretrain:
        args.checkpoint = str(pretrain(args.backbone, out, args.pretrain_set))
    options = setups(args.backbone, args.checkpoint)
    chosen = args.setups.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    own = api.load(recipe).adapters[0].name
    methods = (args.methods or own).split(",")
    rows, ceiling = [], {}
    for seed in seeds:
        for method in methods:
            for setup in chosen:
                run_dir = out / f"{setup}-{method}-{seed}"
                overrides = [
                    f"seed={seed}",
                    f"output.dir={run_dir}",
                    "output.overwrite=true",
                    "output.plots=false",
                    *([] if method == own else [f"adapter={{name: {method}}}"]),
                    *frozen_options(args.backbone, method),
                    *options[setup],
                    *args.set,
                ]
                start = time.perf_counter()
                res = api.run(recipe, overrides, progress=False, log=lambda m: None)
                row = {
                    "seed": seed,
                    "method": method,
                    "setup": setup,
                    "macro_f1": res.metrics["test"]["macro_f1"],
                    "accuracy": res.metrics["test"]["accuracy"],
                    "seconds": round(time.perf_counter() - start, 1),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                if seed not in ceiling:
                    ceiling[seed] = hvg_logreg(res.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps({"rows": rows, "logreg": ceiling}, indent=1))

    def cell(values: list[float]) -> str:
        if len(values) > 1:
            return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}"
        return f"{values[0]:.3f}" if values else "-"

    print(f"\n{args.backbone}, {recipe}, checkpoint {args.checkpoint}")
    print(f"| macro F1 ({len(seeds)} seeds) | " + " | ".join(chosen) + " |")
    print("|---|" + "---|" * len(chosen))
    for method in methods:
        line = [
            cell([r["macro_f1"] for r in rows if r["method"] == method and r["setup"] == s])
            for s in chosen
        ]
        print(f"| {method} | " + " | ".join(line) + " |")
    print(f"| logistic regression on the 765 genes | {cell(list(ceiling.values()))} |")
    print(yaml.safe_dump({"setups": options}, sort_keys=False))


if __name__ == "__main__":
    main()
