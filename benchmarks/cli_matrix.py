"""Every backbone x every method, through the CLI, on real data: `sctune run` then `sctune predict`.

Each shipped small recipe (one per backbone) runs once per method and per dataset with a short
schedule, and the run directory is reloaded with `sctune predict`. This is the issue-4 check
"every pair trains from the CLI and writes its run directory"; the accuracy column is a smoke
number (1-2 epochs, random backbone), not a benchmark. Writes docs/matrix.md.

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
                    "data.min_class_cells=1",
                ]
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
                    pred = subprocess.run(
                        ["sctune", "predict", str(run_dir), dpath, "-o", str(out)],
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                    )
                    row["predict_exit"] = pred.returncode
                else:
                    row["error"] = (run.stderr or run.stdout).strip().splitlines()[-3:]
                print(json.dumps(row), flush=True)
                rows.append(row)
    write_markdown(rows, args)


def write_markdown(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Every backbone x every method from the CLI",
        "",
        "Produced by `python benchmarks/cli_matrix.py "
        f"--epochs {args.epochs} --max-cells {args.max_cells}` from the repository root on the "
        "2-core development machine (CPU). Each cell is `sctune run <small recipe> "
        "adapter={name: METHOD} data.path=DATA` followed by `sctune predict RUN_DIR DATA`. The "
        "backbones are small and RANDOMLY INITIALISED, trained for "
        f"{args.epochs} epoch(s) on at most {args.max_cells} cells: accuracy is a smoke number.",
        "",
        "| backbone | dataset | method | run | files | predict | trainable | test accuracy | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "ok" if r["run_exit"] == 0 else f"exit {r['run_exit']}"
        files = "ok" if r.get("files_ok") else "-"
        pred = {0: "ok", None: "-"}.get(r.get("predict_exit"), f"exit {r.get('predict_exit')}")
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        trainable = f"{r['trainable']:,}" if "trainable" in r else "-"
        lines.append(
            f"| {r['backbone']} | {r['dataset']} | {r['method']} | {ok} | {files} | "
            f"{pred} | {trainable} | {acc} | {r['seconds']} |"
        )
    failed = [r for r in rows if r["run_exit"] != 0 or r.get("predict_exit") not in (0,)]
    lines += ["", f"{len(rows) - len(failed)} of {len(rows)} cells trained and reloaded."]
    for r in failed:
        lines.append(f"- {r['backbone']} / {r['dataset']} / {r['method']}: {r.get('error')}")
    (ROOT / "docs" / "matrix.md").write_text("\n".join(lines) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
