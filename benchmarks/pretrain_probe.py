"""Does self-pretraining help? Random init vs a small self-pretrained backbone, same splits.

1. Pretrain (``scgpt/pretrain_small`` by default; ``--backbone``) on pbmc3k_seurat_labeled (the
   pretraining cells: 2,638 PBMCs, 13,714 genes), writing a real-format checkpoint. (Pooling
   pbmc68k_reduced too would cut the vocabulary to the 763 genes both files hold: several files
   are joined on their common genes.)
2. On zheng_sorted_pbmc_facs, cells the pretraining never saw (10 FACS-sorted populations), run
   cell typing with the randomly initialised backbone and with the pretrained one, on the SAME
   split (same seed, same cells): zero_shot (kNN on the frozen embedding), head (a head on the
   frozen embedding: the linear-probe analogue), gene_encoder_prompt and lora.
3. A logistic regression on 2,000 log-normalised HVGs (chosen on the training cells) on that split.

``--pretrain-on pancreas_xin`` pretrains on the 674 Xin pancreas cells instead;
``--eval pancreas_wang`` scores on Wang's pancreas cells (another lab), ``--eval own`` on the
pretraining file's own held-out test cells.

Prints a markdown table (macro F1, accuracy, training seconds) to paste into docs/results.md.

    python benchmarks/pretrain_probe.py --epochs 4 --eval-epochs 5 --max-cells 2000
    python benchmarks/pretrain_probe.py --pretrain-on pancreas_xin --eval pancreas_wang
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
# --pretrain-on: the pretraining file; --eval: the evaluation file, or "own" (also spelt
# "pbmc3k" for the default pretraining file): the pretraining file itself on the pretraining
# run's split (train on its training cells, score on its test cells, never pretrained on).
PRETRAIN_ON = {
    "pbmc3k": "pbmc3k_seurat_labeled.h5ad",
    "pancreas_xin": "pancreas_xin_scclassify_subset.h5ad",
    "pbmc68k": "pbmc68k_reduced_counts.h5ad",  # the quickstart's 700 cells, as counts
}
EVAL = {  # file, the var column with gene symbols (None: var_names)
    "zheng": ("zheng_sorted_pbmc_facs.h5ad", "gene_symbol"),
    "pancreas_wang": ("pancreas_wang_scclassify_subset.h5ad", None),
}
OWN = ("own", "pbmc3k")
PRETRAIN_FILE = SHARED / PRETRAIN_ON["pbmc3k"]
EVAL_FILE = SHARED / EVAL["zheng"][0]
EVAL_SOURCE = EVAL_FILE  # the evaluation file with every gene (for the HVG regression)
EVAL_GENES: str | None = "gene_symbol"
SPLIT_FILE: Path | None = None


def hvg_subsets(n: int, out: Path, genes_of: str | None = None) -> None:
    """Write both files restricted to the ``n`` most variable genes of the PRETRAINING cells
    (log-normalised variance; scGPT's integration tutorials subset to HVGs the same way), so
    every token a cell keeps is an informative gene; or, with ``genes_of="pbmc68k_reduced"``, to
    the 765 HVGs of scanpy's pbmc68k_reduced (the quickstart's genes). Switches the module
    paths to the copies."""
    import anndata as ad
    import scanpy as sc

    global PRETRAIN_FILE, EVAL_FILE
    out.mkdir(parents=True, exist_ok=True)
    pre = ad.read_h5ad(PRETRAIN_FILE)
    if genes_of == "pbmc68k_reduced":
        genes = set(sc.datasets.pbmc68k_reduced().raw.var_names)
    elif genes_of is not None:  # another shared file's panel, e.g. pancreas_wang's 219 genes
        genes = set(ad.read_h5ad(SHARED / EVAL[genes_of][0], backed="r").var_names)
    else:
        norm = pre.copy()
        sc.pp.normalize_total(norm, target_sum=1e4)
        sc.pp.log1p(norm)
        sc.pp.highly_variable_genes(norm, n_top_genes=n)
        genes = set(norm.var_names[norm.var["highly_variable"]])
    pre[:, [g in genes for g in pre.var_names]].copy().write_h5ad(out / "pretrain_hvg.h5ad")
    ev = ad.read_h5ad(EVAL_FILE)
    symbols = ev.var[EVAL_GENES] if EVAL_GENES is not None else ev.var_names.to_series()
    ev[:, symbols.isin(genes).to_numpy()].copy().write_h5ad(out / "eval_hvg.h5ad")
    PRETRAIN_FILE, EVAL_FILE = out / "pretrain_hvg.h5ad", out / "eval_hvg.h5ad"


ARCH = {  # the evaluation recipe's architecture set to the pretraining recipe's
    "scgpt": {"embsize": 128, "nheads": 4, "d_hid": 256, "nlayers": 4},
    "geneformer": {"hidden_size": 128, "intermediate_size": 256},
}
ARCH["scbert"] = {"dim": 64, "depth": 4, "heads": 4, "dim_head": 16}
SEQ = {"scgpt": "max_seq_len", "geneformer": "max_input_size"}  # tokens per cell (scBERT: all)
EVAL_RECIPE = {
    "scgpt": "scgpt/small_lora_cell_type",
    "geneformer": "geneformer/small_lora_cell_type",
    "scbert": "scbert/small_gene_token_prompt_cell_type",
}
FIXED_BY_CHECKPOINT = {
    "geneformer": (
        "hidden_size",
        "num_layers",
        "num_heads",
        "intermediate_size",
        "max_position_embeddings",
    )
}


def pretrain(
    backbone: str, out: Path, epochs: int, seq: int, extra: list[str]
) -> tuple[Path, dict]:
    overrides = [
        f"data.path={PRETRAIN_FILE}",
        f"trainer.epochs={epochs}",
        *([f"backbone.{SEQ[backbone]}={seq}"] if backbone in SEQ else []),
        "trainer.num_threads=2",
        f"output.dir={out}",
        "output.overwrite=true",
        *extra,
    ]
    start = time.perf_counter()
    res = api.run(f"{backbone}/pretrain_small", overrides, progress=True)
    seconds = time.perf_counter() - start
    folder = res.run_dir / "pretrained"
    opts = yaml.safe_load((folder / "backbone.yaml").read_text())["backbone"]
    opts.pop("name")
    size = sum(p.stat().st_size for p in folder.iterdir())
    info = {"seconds": round(seconds, 1), "bytes": size, "test": res.metrics["test"]}
    info["history"] = [
        json.loads(line) for line in (res.run_dir / "train_log.jsonl").read_text().splitlines()
    ]
    return folder, {**info, "options": opts}


def evaluate(
    backbone: str,
    method: str,
    checkpoint: Path | None,
    out: Path,
    epochs: int,
    cells: int,
    seq: int,
    extra: list[str],
    seed: int = 0,
) -> dict:
    where = (
        [f"data.split.file={SPLIT_FILE}"]
        if SPLIT_FILE is not None
        else [f"data.gene_column={EVAL_GENES or 'null'}", f"data.max_cells={cells}"]
    )
    overrides = [
        f"seed={seed}",
        f"data.path={EVAL_FILE}",
        *where,
        *([f"backbone.{SEQ[backbone]}={seq}"] if backbone in SEQ else []),
        f"adapter={{name: {method}}}",
        f"trainer.epochs={epochs}",
        "trainer.num_threads=2",
        "output.plots=false",
        "output.overwrite=true",
        f"output.dir={out}",
        *[f"backbone.{k}={v}" for k, v in ARCH[backbone].items()],
        *extra,
    ]
    if checkpoint is not None:
        # the options the export says load it (backbone.yaml; paths relative to the folder)
        exported = yaml.safe_load((checkpoint / "backbone.yaml").read_text())["backbone"]
        chosen = {x.split("=", 1)[0] for x in extra}  # --set wins over the export's options
        for key, value in exported.items():
            if key == "name" or f"backbone.{key}" in chosen:
                continue
            if isinstance(value, str) and (checkpoint / value).exists():
                value = (checkpoint / value).resolve()
            overrides.append(f"backbone.{key}={value}")
        # the checkpoint's config fixes the shape: unset the recipe's shape keys
        overrides += [f"backbone.{k}=null" for k in FIXED_BY_CHECKPOINT.get(backbone, ())]
    start = time.perf_counter()
    res = api.run(EVAL_RECIPE[backbone], overrides, progress=False)
    t = res.metrics["test"]
    return {
        "macro_f1": t["macro_f1"],
        "accuracy": t["accuracy"],
        "seconds": round(time.perf_counter() - start, 1),
        "run_dir": str(res.run_dir),
        **({"frozen_logreg": frozen_logreg(res.run_dir)} if method == "zero_shot" else {}),
    }


def frozen_logreg(run_dir: Path) -> dict:
    """A logistic regression on the FROZEN embedding (X_sctune of a zero-shot run), fitted on
    the training cells and scored on the test cells of the same split: the linear probe that is
    compared with the HVG logistic regression."""
    import anndata as ad
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = ad.read_h5ad(run_dir / "predictions.h5ad")
    split = a.obs["sctune_split"].astype(str).to_numpy()
    X, y = a.obsm["X_sctune"], a.obs["cell_type"].astype(str).to_numpy()
    tr, te = split == "train", split == "test"
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    pred = model.fit(X[tr], y[tr]).predict(X[te])
    return {
        "macro_f1": float(f1_score(y[te], pred, average="macro")),
        "accuracy": float(accuracy_score(y[te], pred)),
    }


def hvg_logreg(run_dir: Path) -> dict:
    import anndata as ad
    import scanpy as sc
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    split = json.loads((run_dir / "split.json").read_text())
    a = ad.read_h5ad(EVAL_SOURCE)  # every gene, not the subset
    idx = {c: i for i, c in enumerate(a.obs_names)}
    parts = {k: np.array([idx[c] for c in split[k]]) for k in ("train", "test")}
    values = a.X.data if hasattr(a.X, "data") else np.asarray(a.X).ravel()
    if np.allclose(values, np.round(values)):  # counts (the pancreas files are log-normalised)
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    train = a[parts["train"]].copy()
    sc.pp.highly_variable_genes(train, n_top_genes=min(2000, a.n_vars))
    genes = train.var_names[train.var["highly_variable"]]
    X = a[:, genes].X
    y = a.obs["cell_type"].astype(str).to_numpy()
    model = LogisticRegression(max_iter=3000).fit(X[parts["train"]], y[parts["train"]])
    pred = model.predict(X[parts["test"]])
    yt = y[parts["test"]]
    return {"macro_f1": f1_score(yt, pred, average="macro"), "accuracy": accuracy_score(yt, pred)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="scgpt", choices=sorted(EVAL_RECIPE))
    ap.add_argument("--epochs", type=int, default=4, help="pretraining epochs")
    ap.add_argument("--eval-epochs", type=int, default=5)
    ap.add_argument("--max-cells", type=int, default=2000)
    ap.add_argument("--seq", type=int, default=513)
    ap.add_argument("--methods", default="zero_shot,head,gene_encoder_prompt,lora")
    ap.add_argument("--out", type=Path, default=Path("runs/pretrain_probe"))
    ap.add_argument(
        "--seeds",
        default="0",
        help="evaluation seeds (comma-separated): each draws its own cells and split of the "
        "evaluation file; the table gives the mean and standard deviation over them",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="override for every run, pretraining and evaluation (repeat), e.g. "
        "backbone.value_style=log1p",
    )
    ap.add_argument(
        "--pretrain-set",
        action="append",
        default=[],
        help="override for the pretraining run only (repeat), e.g. task.gepc=true",
    )
    ap.add_argument(
        "--pretrained", type=Path, default=None, help="a finished pretraining run: skip step 1"
    )
    ap.add_argument(
        "--hvg",
        type=int,
        default=0,
        help="restrict both files to this many HVGs of the pretraining cells (0: every gene)",
    )
    ap.add_argument(
        "--genes-of",
        choices=["pbmc68k_reduced", "pancreas_wang"],
        default=None,
        help="restrict both files to the genes of this dataset instead of --hvg (pancreas_wang: "
        "its 219-gene panel, all in pancreas_xin's 980)",
    )
    ap.add_argument(
        "--pretrain-on",
        choices=sorted(PRETRAIN_ON),
        default="pbmc3k",
        help="the pretraining file: pbmc3k (2,638 PBMCs, counts), pancreas_xin (674 pancreas "
        "cells, 980 genes, log-normalised) or pbmc68k (the quickstart's 700 cells x 765 genes, "
        "counts; with --eval own: in-domain pretraining on the cells then fine-tuned on)",
    )
    ap.add_argument(
        "--eval",
        choices=sorted([*EVAL, *OWN]),
        default="zheng",
        help="zheng: 2,000 cells of another lab's sorted PBMCs; pancreas_wang: another lab's "
        "pancreas cells (219 genes, all in pancreas_xin's panel); own (or pbmc3k): the "
        "pretraining file on the pretraining run's own split (its test cells were never "
        "pretrained on)",
    )
    args = ap.parse_args()
    global PRETRAIN_FILE, EVAL_FILE, EVAL_SOURCE, EVAL_GENES, SPLIT_FILE
    PRETRAIN_FILE = SHARED / PRETRAIN_ON[args.pretrain_on]
    if args.eval in OWN:
        EVAL_FILE, EVAL_GENES = PRETRAIN_FILE, None
    else:
        EVAL_FILE, EVAL_GENES = SHARED / EVAL[args.eval][0], EVAL[args.eval][1]
    EVAL_SOURCE = EVAL_FILE
    if args.hvg or args.genes_of:
        hvg_subsets(args.hvg, args.out / "data", args.genes_of)
    if args.eval in OWN:
        EVAL_FILE = PRETRAIN_FILE
        run = args.pretrained if args.pretrained is not None else args.out / "pretrain"
        SPLIT_FILE = (run / "split.json").resolve()
    if args.pretrained is not None:
        metrics = json.loads((args.pretrained / "metrics.json").read_text())
        history = (args.pretrained / "train_log.jsonl").read_text().splitlines()
        folder = args.pretrained / "pretrained"
        info = {
            "seconds": metrics["train"]["seconds"],
            "bytes": sum(p.stat().st_size for p in folder.iterdir()),
            "test": metrics["test"],
            "history": [json.loads(line) for line in history],
        }
    else:
        folder, info = pretrain(
            args.backbone,
            args.out / "pretrain",
            args.epochs,
            args.seq,
            [*args.set, *args.pretrain_set],
        )
    print(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=1, default=str))
    # the random backbone gets the export's non-path options too (pooling, value style, shape),
    # so both columns differ only in the weights; --set still wins
    exported = yaml.safe_load((folder / "backbone.yaml").read_text())["backbone"]
    chosen = {x.split("=", 1)[0] for x in args.set}
    like = [
        f"backbone.{k}={v}"
        for k, v in exported.items()
        if k != "name"
        and f"backbone.{k}" not in chosen
        and not (isinstance(v, str) and (folder / v).exists())
    ]
    rows = []
    seeds = [int(x) for x in args.seeds.split(",")]
    hvg_lr: dict[int, dict] = {}
    for seed in seeds:
        first_run = None
        for method in args.methods.split(","):
            for label, ckpt in (("random", None), ("pretrained", folder)):
                suffix = "" if seeds == [0] else f"_seed{seed}"
                r = evaluate(
                    args.backbone,
                    method,
                    ckpt,
                    args.out / f"{method}_{label}{suffix}",
                    args.eval_epochs,
                    args.max_cells,
                    args.seq,
                    [*like, *args.set],
                    seed=seed,
                )
                first_run = first_run or Path(r["run_dir"])
                rows.append((method, label, seed, r))
                print(method, label, seed, r, flush=True)
        if first_run:
            hvg_lr[seed] = hvg_logreg(first_run)
    print(table(rows, hvg_lr, seeds))
    (args.out / "summary.json").write_text(
        json.dumps({"pretrain": info, "rows": rows, "logreg": hvg_lr}, indent=1, default=str)
    )


LABELS = ("random", "pretrained")


def table(rows: list, hvg_lr: dict[int, dict], seeds: list[int]) -> str:
    """Macro F1 (mean +- sd over the seeds) per method, random vs pretrained side by side."""

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}"

    out = [
        f"\nmacro F1 on the test cells, {len(seeds)} seed(s): {seeds}",
        "| method | random | self-pretrained | pretrained - random (per seed) |",
        "|---|---|---|---|",
    ]
    methods = list(dict.fromkeys(m for m, *_ in rows))

    def line(name: str, scores: dict[str, dict[int, float]]) -> str:
        diff = [scores["pretrained"][s] - scores["random"][s] for s in scores["random"]]
        return (
            f"| {name} | {cell(list(scores['random'].values()))} | "
            f"{cell(list(scores['pretrained'].values()))} | {cell(diff)} |"
        )

    for method in methods:
        mine = [(lab, s, r) for m, lab, s, r in rows if m == method]
        scores = {k: {s: r["macro_f1"] for lab, s, r in mine if lab == k} for k in LABELS}
        out.append(line(method, scores))
        if all("frozen_logreg" in r for _, _, r in mine):
            frozen = {
                k: {s: r["frozen_logreg"]["macro_f1"] for lab, s, r in mine if lab == k}
                for k in LABELS
            }
            out.append(line("logistic regression on the frozen embedding", frozen))
    if hvg_lr:
        out.append(
            f"| logistic regression, 2,000 HVGs | {cell([v['macro_f1'] for v in hvg_lr.values()])} | - | - |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
