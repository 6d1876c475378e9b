"""Training throughput and peak memory of every adapter vs full fine-tuning, scGPT whole-human size.

Usage (repository root)::

    python benchmarks/throughput.py                      # 512 d, 12 layers, 8 heads, d_hid 512,
                                                         # 60,697 tokens; seq 1200, batch 8; GPU
    python benchmarks/throughput.py --small              # tiny model, seq 128, batch 4: CPU check
    python benchmarks/throughput.py --methods full lora --repeats 30 --json out.json

The model is sctune's own assembly (randomly initialised backbone, frozen, adapters applied,
``cell_type`` head), fed synthetic batches of ``batch`` cells x ``seq`` tokens (<cls> + random
genes, random expression bins, no padding). One step is forward + loss + backward (no optimizer
step; ``--optimizer-step`` adds an Adam step). After ``--warmup`` steps, ``--repeats`` steps are
timed one by one (CUDA synchronised) and the MEDIAN is reported as cells/s.

Each method runs in its own child process, so the memory numbers are per method: peak CUDA
memory allocated (``torch.cuda.max_memory_allocated``) on a GPU, and the child's peak resident
set (``os.wait4`` rusage) everywhere. The table prints each method's ratios to full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METHODS = ["full", "head", "gene_token_prompt", "gene_encoder_prompt", "prefix_prompt", "lora"]
WHOLE_HUMAN = {"embsize": 512, "nheads": 8, "d_hid": 512, "nlayers": 12, "vocab": 60_694}
SMALL = {"embsize": 32, "nheads": 2, "d_hid": 64, "nlayers": 2, "vocab": 2_000}


def build(
    method: str, shape: dict[str, int], workdir: Path, n_classes: int, dropout: float
) -> Any:
    """Backbone + adapter + head through sctune's own registry and assembly."""
    import numpy as np

    from sctune import api
    from sctune.core.assembly import assemble

    registry = api.get_registry()
    vocab = {f"GENE{i}": i for i in range(shape["vocab"])}
    path = workdir / "vocab.json"
    path.write_text(json.dumps(vocab))
    backbone = registry.instance("backbone", "scgpt")
    bcfg = backbone.config_cls.model_validate(
        {
            "vocab": str(path),
            "embsize": shape["embsize"],
            "nheads": shape["nheads"],
            "d_hid": shape["d_hid"],
            "nlayers": shape["nlayers"],
            "dropout": dropout,
            "attention_dropout": 0.0,
        }
    )
    adapter = registry.instance("adapter", method)
    acfg = adapter.config_cls.model_validate({})
    task = registry.instance("task", "cell_type")
    tcfg = task.config_cls.model_validate({})
    labels = np.array([f"type{i % n_classes}" for i in range(10 * n_classes)])
    split = {"train": np.arange(len(labels)), "valid": np.arange(0), "test": np.arange(0)}
    prepared = task.prepare(labels, split, tcfg)
    asm = assemble(backbone, bcfg, [(adapter, acfg)], task, tcfg, prepared)
    return asm, task, prepared, tcfg


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Inside a child: build one method, time its steps, return the numbers."""
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = SMALL if args.small else WHOLE_HUMAN
    with tempfile.TemporaryDirectory() as tmp:
        asm, task, prepared, tcfg = build(
            args.method, shape, Path(tmp), args.classes, args.dropout
        )
    model = asm.model.to(device)
    model.train()
    n_train = sum(p.numel() for p in asm.trainable.values())
    n_total = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    b, L = args.batch, args.seq
    gene_ids = torch.randint(0, shape["vocab"], (b, L), generator=g)
    gene_ids[:, 0] = shape["vocab"] + 1  # <cls> (appended after the genes: <pad>, <cls>, <eoc>)
    values = torch.randint(1, 51, (b, L), generator=g).float()
    values[:, 0] = 0.0
    batch = {
        "gene_ids": gene_ids.to(device),
        "values": values.to(device),
        "padding_mask": torch.zeros(b, L, dtype=torch.bool, device=device),
    }
    y = torch.randint(0, args.classes, (b,), generator=g).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4) if args.optimizer_step else None
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision)
    scaler = (
        torch.amp.GradScaler("cuda")
        if args.precision == "fp16" and device.type == "cuda"
        else None
    )
    cuda = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            _, logits = model(batch)
            loss = task.loss(logits.float(), y, prepared, tcfg)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if opt is not None:
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        for p in params:
            p.grad = None

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    med = statistics.median(times)
    return {
        "method": args.method,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "precision": args.precision,
        "batch": b,
        "seq": L,
        "shape": shape,
        "trainable_params": n_train,
        "total_params": n_total,
        "median_step_s": med,
        "min_step_s": min(times),
        "max_step_s": max(times),
        "repeats": args.repeats,
        "cells_per_s": b / med,
        "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "torch": torch.__version__,
    }


def run_one(args: argparse.Namespace, method: str) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(out),
        "--method",
        method,
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--classes",
        str(args.classes),
        "--dropout",
        str(args.dropout),
    ]
    cmd += ["--small"] * args.small + ["--optimizer-step"] * args.optimizer_step
    cmd += ["--threads", str(args.threads)] if args.threads else []
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or out.stat().st_size == 0:
        return {"method": method, "error": f"child exited with {proc.returncode}"}
    res = json.loads(out.read_text())
    out.unlink()
    res["peak_rss_mb"] = usage.ru_maxrss / 1024
    return res


def table(rows: list[dict[str, Any]]) -> str:
    full = next((r for r in rows if r.get("method") == "full" and "error" not in r), None)
    mem_key = "peak_cuda_mb" if full and full.get("peak_cuda_mb") else "peak_rss_mb"
    mem_name = "peak CUDA MB" if mem_key == "peak_cuda_mb" else "peak RSS MB"
    lines = [
        f"| method | trainable params | cells/s (median) | x full | {mem_name} | x full |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | – | {r['error']} | – | – | – |")
            continue
        speed = f"{r['cells_per_s'] / full['cells_per_s']:.2f}" if full else "–"
        mem = f"{r[mem_key] / full[mem_key]:.2f}" if full and full.get(mem_key) else "–"
        lines.append(
            f"| {r['method']} | {r['trainable_params']:,} | {r['cells_per_s']:.1f} | {speed} | "
            f"{r[mem_key]:.0f} | {mem} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--small", action="store_true", help="tiny model, seq 128, batch 4 (CPU check)"
    )
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    ap.add_argument(
        "--precision",
        default=None,
        choices=["32", "fp16", "bf16"],
        help="autocast dtype (default: fp16 on cuda like recipes' 16-mixed, 32 on cpu)",
    )
    ap.add_argument(
        "--batch", type=int, default=None, help="cells per step (default 8; --small 4)"
    )
    ap.add_argument(
        "--seq",
        type=int,
        default=None,
        help="tokens per cell incl. <cls> (default 1200; --small 128)",
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed steps (default 20; --small 5)"
    )
    ap.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 3; --small 1)"
    )
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument(
        "--dropout", type=float, default=0.2, help="backbone dropout (scGPT fine-tuning: 0.2)"
    )
    ap.add_argument(
        "--optimizer-step", action="store_true", help="include an Adam step in each timed step"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", help="write all rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.precision is None:
        args.precision = "fp16" if args.device.startswith("cuda") else "32"
    args.batch = args.batch or (4 if args.small else 8)
    args.seq = args.seq or (128 if args.small else 1200)
    args.repeats = args.repeats or (5 if args.small else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.small else 3)
    if args.child:
        Path(args.child).write_text(json.dumps(measure(args)))
        return 0
    rows = []
    for m in args.methods:
        r = run_one(args, m)
        rows.append(r)
        if "error" in r:
            print(f"{m}: FAILED ({r['error']})", flush=True)
        else:
            print(
                f"{m}: {r['cells_per_s']:.1f} cells/s (median of {r['repeats']}), "
                f"peak CUDA {r['peak_cuda_mb'] or 0:.0f} MB, peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    ok = next((r for r in rows if "error" not in r), {})
    print(
        f"\nscGPT {'small' if args.small else 'whole-human'} size, random init, batch {args.batch} x "
        f"seq {args.seq}, {args.precision}, {ok.get('device_name', args.device)}, torch {ok.get('torch')}; "
        f"forward+backward{' + Adam step' if args.optimizer_step else ''}\n"
    )
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
