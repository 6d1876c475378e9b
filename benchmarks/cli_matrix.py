"""Every backbone x every method, through the CLI, on real data: `sctune run` then `sctune predict`.

Each shipped small recipe (one per backbone) runs once per method and per dataset with a short
schedule; then `sctune predict` annotates the run's own cells (its predictions.h5ad) and must
agree with the run: the share of identical labels and the largest difference of X_sctune are
reported, and a cell passes only with 100 % agreement and a difference <= 1e-5. The accuracy
column is a smoke number (1-2 epochs, random backbone), not a benchmark. Writes docs/matrix.md.

    python benchmarks/cli_matrix.py [--epochs 1] [--max-cells 400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "scgpt": "scgpt/small_lora_cell_type",
    "geneformer": "geneformer/small_lora_cell_type",
    "scbert": "scbert/small_gene_token_prompt_cell_type",
}
METHODS = [
    "full",
    "head",
    "zero_shot",
    "gene_token_prompt",
    "gene_encoder_prompt",
    "prefix_prompt",
    "lora",
]
DATASETS = {
    "pbmc68k_reduced (counts)": "../shared/data/pbmc68k_reduced_counts.h5ad",
    "pbmc3k_seurat_labeled": "../shared/data/pbmc3k_seurat_labeled.h5ad",
}
FILES = [
    "adapter.safetensors",
    "head.safetensors",
    "adapter.json",
    "metrics.json",
    "predictions.h5ad",
    "split.json",
    "confusion_matrix.png",
    "umap.png",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-cells", type=int, default=400)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "matrix" / "runs")
    args = ap.parse_args()
    from sctune import api

    registry = api.get_registry()
    rows = []
    for backbone, recipe in RECIPES.items():
        for dname, dpath in DATASETS.items():
            for method in METHODS:
                run_dir = args.out / f"{backbone}-{method}-{Path(dpath).stem}"
                cmd = [
                    "sctune",
                    "run",
                    recipe,
                    "-q",
                    f"adapter={{name: {method}}}",
                    f"data.path={dpath}",
                    f"data.max_cells={args.max_cells}",
                    f"trainer.epochs={args.epochs}",
                    f"output.dir={run_dir}",
                    "output.overwrite=true",
                    "task.min_class_cells=1",
                ]
                if not registry.get("adapter", method).cls.trains:  # no untrained pooling stem
                    free = registry.get("backbone", backbone).cls.parameter_free_options
                    cmd += [f"backbone.{k}={v}" for k, v in free.items()]
                start = time.perf_counter()
                run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                seconds = time.perf_counter() - start
                row = {
                    "backbone": backbone,
                    "dataset": dname,
                    "method": method,
                    "run_exit": run.returncode,
                    "seconds": round(seconds, 1),
                }
                if run.returncode == 0:
                    m = json.loads((run_dir / "metrics.json").read_text())
                    row["accuracy"] = m["test"]["accuracy"]
                    row["trainable"] = m["parameters"]["trainable"]
                    row["files_ok"] = all((run_dir / f).is_file() for f in FILES)
                    out = run_dir.parent / f"{run_dir.name}.annotated.h5ad"
                    out.unlink(missing_ok=True)
                    own = run_dir / "predictions.h5ad"
                    pred = subprocess.run(
                        ["sctune", "predict", str(run_dir), str(own), "-o", str(out)],
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                    )
                    row["predict_exit"] = pred.returncode
                    if pred.returncode == 0:
                        row.update(agreement(own, out))
                else:
                    row["error"] = (run.stderr or run.stdout).strip().splitlines()[-3:]
                print(json.dumps(row), flush=True)
                rows.append(row)
    write_markdown(rows, args)


def agreement(run_file: Path, predicted: Path) -> dict:
    import anndata as ad
    import numpy as np

    a, b = ad.read_h5ad(run_file), ad.read_h5ad(predicted)
    same = a.obs["sctune_prediction"].to_numpy(dtype=str) == b.obs["sctune_prediction"].to_numpy(
        dtype=str
    )
    return {
        "label_agreement": float(same.mean()),
        "max_abs_diff": float(np.abs(a.obsm["X_sctune"] - b.obsm["X_sctune"]).max()),
    }


def _agrees(r: dict) -> bool:
    return r.get("label_agreement") == 1.0 and r.get("max_abs_diff", 1.0) <= 1e-5


def write_markdown(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Every backbone x every method from the CLI",
        "",
        "Produced by `python benchmarks/cli_matrix.py "
        f"--epochs {args.epochs} --max-cells {args.max_cells}` from the repository root on the "
        "2-core development machine (CPU). Each cell is `sctune run <small recipe> "
        "adapter={name: METHOD} data.path=DATA` followed by `sctune predict RUN_DIR "
        "RUN_DIR/predictions.h5ad` (the run's own cells); 'labels' is the share of cells where "
        "predict gives the run's label and 'max |dX|' the largest difference of the embedding "
        "X_sctune. A cell passes with 100 % and <= 1e-5. zero_shot uses `backbone.pooling=mean` "
        "on Geneformer and scBERT (their default poolings have an untrained stem). The "
        "backbones are small and RANDOMLY INITIALISED, trained for "
        f"{args.epochs} epoch(s) on at most {args.max_cells} cells: accuracy is a smoke number.",
        "",
        "| backbone | dataset | method | run | files | predict | labels | max abs dX | trainable | test accuracy | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "ok" if r["run_exit"] == 0 else f"exit {r['run_exit']}"
        files = "ok" if r.get("files_ok") else "-"
        pred = {0: "ok", None: "-"}.get(r.get("predict_exit"), f"exit {r.get('predict_exit')}")
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        trainable = f"{r['trainable']:,}" if "trainable" in r else "-"
        labels = f"{100 * r['label_agreement']:.1f} %" if "label_agreement" in r else "-"
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        lines.append(
            f"| {r['backbone']} | {r['dataset']} | {r['method']} | {ok} | {files} | "
            f"{pred} | {labels} | {diff} | {trainable} | {acc} | {r['seconds']} |"
        )
    failed = [r for r in rows if r["run_exit"] != 0 or not _agrees(r)]
    lines += [
        "",
        f"{len(rows) - len(failed)} of {len(rows)} cells trained, reloaded and reproduced the "
        "run's own predictions exactly.",
    ]
    for r in failed:
        lines.append(f"- {r['backbone']} / {r['dataset']} / {r['method']}: {r.get('error')}")
    (ROOT / "docs" / "matrix.md").write_text("\n".join(lines) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
