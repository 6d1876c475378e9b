"""sctune vs the reference scGPT 0.2.4 ``TransformerModel``, side by side in one process tree.

Usage (repository root; the reference is installed with ``pip install --no-deps scgpt==0.2.4``)::

    python benchmarks/vs_reference.py                     # CPU: step + real-data epoch (subset)
    python benchmarks/vs_reference.py --epoch-cells 0     # the whole pbmc3k epoch (GPU)
    python benchmarks/vs_reference.py --profile full      # torch.profiler top of one sctune step
    python benchmarks/vs_reference.py --profile reference --json out.json
    SCTUNE_SHARED_DATA=.data python benchmarks/vs_reference.py   # data copied next to the code

Two sections, every measurement in its own child process (peak memory is per method: CUDA max
allocated on a GPU, the child's peak RSS from ``os.wait4`` everywhere):

step
    whole-human scGPT size (512 d, 12 layers, 8 heads, d_hid 512, 60,697 tokens), ``--step-batch``
    cells x ``--step-seq`` tokens (default 4 x 600), one training step = forward + loss + backward
    + Adam. The reference is scGPT's ``TransformerModel`` (loaded as the tests load it, without
    ``import scgpt``), with the annotation tutorial's settings: dropout ``--dropout`` (0.2, which
    scGPT also applies to the attention probabilities), ``CLS=True`` and its cls decoder, every
    parameter trained. sctune's rows are its own assembly (backbone + adapter + cell_type head) at
    the same size, batch and dropout; ``full`` runs at the reference's own dropout settings
    (attention dropout = dropout), the PEFT rows at sctune's defaults (attention dropout 0).
epoch
    ``pbmc3k_seurat_labeled`` (../shared/data), tokenized as each implementation does it: scGPT's
    tutorial pads every cell to ``max_seq_len`` (``tokenize_and_pad_batch``), sctune pads per
    batch (length-bucketed, the trainer's own sampler). Same cells, same batch size, same binning;
    one pass of training steps with Adam. ``--epoch-cells N`` takes a fixed random subset of N
    cells (CPU default 48: an epoch of the whole-human model over all 2,638 cells padded to 2,001
    tokens would take hours on 2 cores); ``0`` = every cell.
ddp (``--sections ddp``)
    the quickstart recipe trained by 1 process and by 2 (``torchrun``, gloo, one thread each):
    training seconds, the speed-up, and the test metrics, which should agree.

Every row prints its ratio to the reference: time (reference / method, so > 1 is faster) and
peak memory (method / reference). On a GPU the step section also prints the model-FLOPs
utilisation (analytic matmul FLOPs / step time / the device's dense bf16 peak).
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCTUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATA = SHARED / "pbmc3k_seurat_labeled.h5ad"
VOCAB = SHARED / "vocab" / "scgpt_census_vocab.json"
WHOLE_HUMAN = {"embsize": 512, "nheads": 8, "d_hid": 512, "nlayers": 12}
SMALL = {"embsize": 64, "nheads": 4, "d_hid": 64, "nlayers": 2}
METHODS = ["full", "head", "gene_token_prompt", "gene_encoder_prompt", "prefix_prompt", "lora"]
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


# --------------------------------------------------------------------------- models


def vocabulary(small: bool) -> dict[str, int]:
    """scGPT's whole-human vocabulary (60,697 tokens) when present, else a synthetic one."""
    if VOCAB.is_file() and not small:
        vocab = json.loads(VOCAB.read_text())
    else:
        vocab = {f"GENE{i}": i for i in range(2_000 if small else 60_694)}
    for tok in ("<pad>", "<cls>", "<eoc>"):
        vocab.setdefault(tok, max(vocab.values()) + 1)  # scGPT appends the specials
    return vocab


def build_reference(shape: dict[str, int], vocab: dict[str, int], n_cls: int, dropout: float):
    """scGPT 0.2.4's TransformerModel as the annotation tutorial builds it (no MVC/DAB/ECS)."""
    from sctune import testing

    cls = testing.reference_scgpt_class()
    if cls is None:
        raise SystemExit("the reference needs: pip install --no-deps scgpt==0.2.4")
    return cls(
        max(vocab.values()) + 1,
        shape["embsize"],
        shape["nheads"],
        shape["d_hid"],
        shape["nlayers"],
        nlayers_cls=3,
        n_cls=n_cls,
        vocab=vocab,
        dropout=dropout,
        pad_token="<pad>",
        pad_value=-2,
        do_mvc=False,
        do_dab=False,
        input_emb_style="continuous",
        n_input_bins=51,
        cell_emb_style="cls",
        explicit_zero_prob=False,
        use_fast_transformer=False,
        pre_norm=False,
    )


def build_sctune(
    method: str,
    shape: dict[str, int],
    vocab_path: Path,
    labels: Any,
    dropout: float,
    attention_dropout: float,
    max_seq_len: int = 2001,
) -> Any:
    import numpy as np

    from sctune import api
    from sctune.core.assembly import assemble

    registry = api.get_registry()
    backbone = registry.instance("backbone", "scgpt")
    bcfg = backbone.config_cls.model_validate(
        {
            "vocab": str(vocab_path),
            **shape,
            "dropout": dropout,
            "attention_dropout": attention_dropout,
            "max_seq_len": max_seq_len,
        }
    )
    adapter = registry.instance("adapter", method)
    acfg = adapter.config_cls.model_validate({})
    task = registry.instance("task", "cell_type")
    tcfg = task.config_cls.model_validate({})
    split = {"train": np.arange(len(labels)), "valid": np.arange(0), "test": np.arange(0)}
    prepared = task.prepare(np.asarray(labels), split, tcfg)
    asm = assemble(backbone, bcfg, [(adapter, acfg)], task, tcfg, prepared)
    return asm, backbone, bcfg, task, tcfg, prepared


def step_flops(shape: dict[str, int], batch: int, seq: int, *, trains_weights: bool) -> float:
    """Analytic matmul FLOPs of one training step of the encoder (2 per multiply-add).

    Forward per layer and token: QKV + out projection ``8 d^2``, FFN ``4 d d_hid``, attention
    scores and mixing ``4 seq d``. Backward costs twice the forward when weights train (input and
    weight gradients), once when only activations need gradients (frozen weights, PEFT).
    """
    d, h, n = shape["embsize"], shape["d_hid"], shape["nlayers"]
    fwd = batch * seq * n * (8 * d * d + 4 * d * h + 4 * seq * d)
    return fwd * (3.0 if trains_weights else 2.0)


# --------------------------------------------------------------------------- children


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _make_step(model: Any, impl: str, task: Any, prepared: Any, tcfg: Any, device: Any, a: Any):
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
    scaler = torch.amp.GradScaler("cuda") if a.precision == "fp16" else None

    def step(batch: dict[str, Any], y: Any) -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if impl == "reference":
                out = model(
                    batch["gene_ids"],
                    batch["values"],
                    src_key_padding_mask=batch["padding_mask"],
                    CLS=True,
                )
                loss = F.cross_entropy(out["cls_output"].float(), y)
            else:
                _, logits = model(batch)
                loss = task.loss(logits.float(), y, prepared, tcfg)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, params


def _model(a: Any, impl: str, method: str, vocab: dict[str, int], n_cls: int, tmp: Path):
    shape = SMALL if a.small else WHOLE_HUMAN
    if impl == "reference":
        return build_reference(shape, vocab, n_cls, a.dropout), None, None, None, None, None
    vpath = tmp / "vocab.json"
    vpath.write_text(json.dumps(vocab))
    # 'full' at the reference's own dropout settings; PEFT rows at sctune's defaults
    attn = a.dropout if method == "full" else 0.0
    labels = [f"t{i % n_cls}" for i in range(10 * n_cls)]
    asm, backbone, bcfg, task, tcfg, prepared = build_sctune(
        method, shape, vpath, labels, a.dropout, attn, a.max_seq_len
    )
    return asm.model, backbone, bcfg, task, tcfg, prepared


def child_step(a: Any) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    device = torch.device(a.device)
    vocab = vocabulary(a.small)
    n_cls = 9
    with tempfile.TemporaryDirectory() as tmp:
        model, _, _, task, tcfg, prepared = _model(a, a.impl, a.method, vocab, n_cls, Path(tmp))
    model = model.to(device).train()
    if a.compile:
        model = torch.compile(model)
    g = torch.Generator().manual_seed(0)
    b, L = a.step_batch, a.step_seq
    genes = [v for k, v in vocab.items() if not k.startswith("<")]
    pick = torch.as_tensor(genes)[torch.randint(0, len(genes), (b, L), generator=g)]
    pick[:, 0] = vocab["<cls>"]
    values = torch.randint(1, 51, (b, L), generator=g).float()
    values[:, 0] = 0.0
    batch = {
        "gene_ids": pick.to(device),
        "values": values.to(device),
        "padding_mask": torch.zeros(b, L, dtype=torch.bool, device=device),
    }
    y = torch.randint(0, n_cls, (b,), generator=g).to(device)
    step, params = _make_step(model, a.impl, task, prepared, tcfg, device, a)
    for _ in range(a.warmup):
        step(batch, y)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if a.profile:
        return _profile(step, batch, y, device)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        step(batch, y)
        _sync(device)
        times.append(time.perf_counter() - t0)
    shape = SMALL if a.small else WHOLE_HUMAN
    med = statistics.median(times)
    trains_weights = a.impl == "reference" or a.method == "full"
    flops = step_flops(shape, b, L, trains_weights=trains_weights)
    return {
        "median_s": med,
        "times": times,
        "trainable": sum(p.numel() for p in params),
        "tflops_per_s": flops / med / 1e12,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }


def _profile(step: Any, batch: Any, y: Any, device: Any) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step(batch, y)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {"profile": prof.key_averages().table(sort_by=key, row_limit=18)}


def _pbmc3k(a: Any) -> tuple[Any, Any]:
    """pbmc3k tokens (sctune's tokenizer: scGPT's binning) and labels, optionally subsampled."""
    import numpy as np

    from sctune.core.data import load_data
    from sctune.core.recipe import DataConfig

    data = load_data(DataConfig(path=str(DATA)), seed=0)
    expr, labels = data.expression, data.labels
    if a.epoch_cells and a.epoch_cells < expr.n_cells:
        from dataclasses import replace

        idx = np.sort(np.random.default_rng(0).choice(expr.n_cells, a.epoch_cells, replace=False))
        expr = replace(
            expr,
            X=expr.X[idx],
            cell_ids=tuple(expr.cell_ids[i] for i in idx),
            library_size=None if expr.library_size is None else expr.library_size[idx],
        )
        labels = labels[idx]
    return expr, labels


def child_epoch(a: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.manual_seed(0)
    device = torch.device(a.device)
    vocab = vocabulary(a.small)
    expr, labels = _pbmc3k(a)
    classes = sorted(set(labels))
    y_all = np.array([classes.index(c) for c in labels])
    with tempfile.TemporaryDirectory() as tmp:
        model, backbone, bcfg, task, tcfg, prepared = _model(
            a, a.impl, a.method, vocab, len(classes), Path(tmp)
        )
        if backbone is None:  # the reference tokenizes with the same binning
            from sctune.backbones.scgpt.tokenizer import tokenize

            t0 = time.perf_counter()
            cells = tokenize(
                expr,
                vocab,
                max_seq_len=a.max_seq_len,
                n_bins=51,
                min_gene_match=0.0,
                pad_value=-2.0,
                seed=0,
            )
        else:  # through the token cache: the later children of a run read the first's tokens
            from sctune.core.tokencache import tokenize_cached

            t0 = time.perf_counter()
            cells = tokenize_cached(backbone, expr, bcfg, seed=0)
        tokenize_s = time.perf_counter() - t0
    model = model.to(device).train()
    step, _ = _make_step(model, a.impl, task, prepared, tcfg, device, a)
    lengths = np.array([len(c["gene_ids"]) for c in (cells[i] for i in range(len(cells)))])
    if a.impl == "reference":
        # scGPT's tutorial: tokenize_and_pad_batch pads every cell to max_seq_len
        width = a.max_seq_len
        pad = {"gene_ids": vocab["<pad>"], "values": -2.0}
        n = len(cells)
        ids = np.full((n, width), pad["gene_ids"], dtype=np.int64)
        vals = np.full((n, width), pad["values"], dtype=np.float32)
        for i in range(n):
            c = cells[i]
            ids[i, : len(c["gene_ids"])] = c["gene_ids"]
            vals[i, : len(c["values"])] = c["values"]
        ds = torch.utils.data.TensorDataset(
            torch.as_tensor(ids), torch.as_tensor(vals), torch.as_tensor(y_all)
        )
        dl = torch.utils.data.DataLoader(
            ds, batch_size=a.epoch_batch, shuffle=True, generator=torch.Generator().manual_seed(0)
        )

        def batches() -> Any:
            for gi, v, y in dl:
                yield {"gene_ids": gi, "values": v, "padding_mask": gi == pad["gene_ids"]}, y

    else:
        from sctune.core.trainer import _Indexed, _loader

        ds = _Indexed(cells, y_all)
        dl = _loader(
            ds,
            a.epoch_batch,
            ds.collate,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
            lengths=lengths if a.bucket else None,
        )

        def batches() -> Any:
            for batch in dl:
                y = batch.pop("targets")
                yield batch, y

    real, padded = 0, 0
    # one untimed warm-up step (allocator, threads), then the timed epoch
    first = next(iter(batches()))
    step({k: v.to(device) for k, v in first[0].items()}, first[1].to(device))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = []
    t0 = time.perf_counter()
    for batch, y in batches():
        mask = batch["padding_mask"]
        real += int((~mask).sum())
        padded += int(mask.numel())
        s0 = time.perf_counter()
        step({k: v.to(device) for k, v in batch.items()}, y.to(device))
        _sync(device)
        steps.append(time.perf_counter() - s0)
    epoch_s = time.perf_counter() - t0
    return {
        "epoch_s": epoch_s,
        "steps": len(steps),
        "median_step_s": statistics.median(steps),
        "cells": len(cells),
        "tokenize_s": tokenize_s,
        "padding_fraction": 1 - real / max(padded, 1),
        "mean_tokens": float(lengths.mean()),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
    }


def ddp_scaling(epochs: int) -> list[dict[str, Any]]:
    """The quickstart recipe on 1 process and on 2 (torchrun, gloo, 1 thread each)."""
    import shutil

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            out = Path(tmp) / f"run{n}"
            launcher = (
                [sys.executable, "-m", "sctune"]
                if n == 1
                else [str(shutil.which("torchrun")), "--nproc_per_node", "2", "-m", "sctune"]
            )
            cmd = [*launcher, "run", "quickstart", f"trainer.epochs={epochs}"]
            cmd += ["trainer.device=cpu", f"output.dir={out}", "-q"]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                rows.append({"processes": n, "error": proc.stderr[-500:]})
                continue
            m = json.loads((out / "metrics.json").read_text())
            rows.append(
                {
                    "processes": n,
                    "train_s": m["train"]["seconds"],
                    "wall_s": wall,
                    "epochs": m["train"]["epochs_run"],
                    "accuracy": m["test"]["accuracy"],
                    "macro_f1": m["test"]["macro_f1"],
                }
            )
    return rows


def ddp_table(rows: list[dict[str, Any]]) -> str:
    one = next((r for r in rows if r["processes"] == 1 and "error" not in r), None)
    lines = [
        "| processes | training s | speed-up | test accuracy | test macro F1 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['processes']} | failed: {r['error'][-200:]} |")
            continue
        up = f"{one['train_s'] / r['train_s']:.2f}" if one else "–"
        lines.append(
            f"| {r['processes']} | {r['train_s']:.1f} | {up} | {r['accuracy']:.3f} | "
            f"{r['macro_f1']:.3f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- parent


def run_child(a: Any, section: str, impl: str, method: str) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", section, "--out", str(out)]
    cmd += ["--impl", impl, "--method", method] + a.passthrough
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    row: dict[str, Any] = {"section": section, "impl": impl, "method": method}
    if code != 0 or out.stat().st_size == 0:
        row["error"] = f"child exited with {code}"
        return row
    row.update(json.loads(out.read_text()))
    out.unlink()
    row["peak_rss_mb"] = usage.ru_maxrss / 1024
    return row


def _label(r: dict[str, Any]) -> str:
    if r["impl"] == "reference":
        return "reference scGPT (full)"
    return f"sctune {r['method']}"


def step_table(rows: list[dict[str, Any]], a: Any) -> str:
    ref = next(r for r in rows if r["impl"] == "reference")
    gpu = ref.get("peak_cuda_mb") is not None
    mem = "peak_cuda_mb" if gpu else "peak_rss_mb"
    peak = _peak_tflops(ref.get("device_name", "cpu"), a.peak_tflops)
    head = (
        "| | trainable | s/step (median) | speed x ref | peak "
        + ("CUDA" if gpu else "RSS")
        + " MB | memory x ref |"
        + (" TFLOP/s | MFU |" if peak else "")
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if peak else "")]
    for r in rows:
        if "error" in r:
            lines.append(f"| {_label(r)} | {r['error']} |")
            continue
        line = (
            f"| {_label(r)} | {r['trainable']:,} | {r['median_s']:.3f} | "
            f"{ref['median_s'] / r['median_s']:.2f} | {r[mem]:,.0f} | {r[mem] / ref[mem]:.2f} |"
        )
        if peak:
            line += f" {r['tflops_per_s']:.1f} | {100 * r['tflops_per_s'] / peak:.1f}% |"
        lines.append(line)
    return "\n".join(lines)


def epoch_table(rows: list[dict[str, Any]]) -> str:
    ref = next(r for r in rows if r["impl"] == "reference")
    gpu = ref.get("peak_cuda_mb") is not None
    mem = "peak_cuda_mb" if gpu else "peak_rss_mb"
    lines = [
        "| | steps | epoch s | speed x ref | padding | median s/step | peak "
        + ("CUDA" if gpu else "RSS")
        + " MB | memory x ref |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {_label(r)} | {r['error']} |")
            continue
        lines.append(
            f"| {_label(r)} | {r['steps']} | {r['epoch_s']:.1f} | "
            f"{ref['epoch_s'] / r['epoch_s']:.2f} | {r['padding_fraction']:.0%} | "
            f"{r['median_step_s']:.3f} | {r[mem]:,.0f} | {r[mem] / ref[mem]:.2f} |"
        )
    return "\n".join(lines)


def _peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def targets(step_rows: list[dict[str, Any]], epoch_rows: list[dict[str, Any]]) -> list[str]:
    """The issue's three targets, each with its measured ratio."""
    out = []

    def get(rows: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rows
                if r["impl"] == "sctune" and r["method"] == method and "error" not in r
            ),
            None,
        )

    ref_s = next((r for r in step_rows if r["impl"] == "reference" and "error" not in r), None)
    ref_e = next((r for r in epoch_rows if r["impl"] == "reference" and "error" not in r), None)
    if ref_e and (g := get(epoch_rows, "gene_encoder_prompt")):
        x = ref_e["epoch_s"] / g["epoch_s"]
        out.append(
            f"real-data epoch, gene_encoder_prompt vs reference full: {x:.2f}x (target >= 4)"
        )
    if ref_s and (f := get(step_rows, "full")):
        x = ref_s["median_s"] / f["median_s"]
        out.append(f"step, full at the reference's dropout: {x:.2f}x faster (target >= 1.5)")
    if ref_s:
        mem = "peak_cuda_mb" if ref_s.get("peak_cuda_mb") is not None else "peak_rss_mb"
        peft = [r for r in step_rows if r["impl"] == "sctune" and r["method"] != "full"]
        for r in peft:
            if "error" not in r:
                out.append(
                    f"peak memory, {r['method']}: {r[mem] / ref_s[mem]:.2f}x the reference "
                    "(target <= 0.5)"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--epoch-methods", nargs="+", default=["full", "gene_encoder_prompt", "lora"])
    ap.add_argument(
        "--sections", nargs="+", default=["step", "epoch"], choices=["step", "epoch", "ddp"]
    )
    ap.add_argument("--ddp-epochs", type=int, default=3, help="ddp section: quickstart epochs")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    ap.add_argument("--precision", default=None, choices=["32", "bf16", "fp16"],
                    help="autocast dtype (default: bf16 on cuda, 32 on cpu)")  # fmt: skip
    ap.add_argument("--step-batch", type=int, default=None, help="default 4 (cpu), 32 (cuda)")
    ap.add_argument("--step-seq", type=int, default=None, help="default 600 (cpu), 1200 (cuda)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed steps (default 5 cpu, 20 gpu)"
    )
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--epoch-cells", type=int, default=None, help="0 = all (default 48 on cpu)")
    ap.add_argument("--epoch-batch", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=2001)
    ap.add_argument("--dropout", type=float, default=0.2, help="scGPT fine-tuning dropout")
    ap.add_argument("--no-bucket", dest="bucket", action="store_false",
                    help="sctune: shuffle without length buckets")  # fmt: skip
    ap.add_argument("--compile", action="store_true", help="torch.compile the models")
    ap.add_argument("--small", action="store_true", help="tiny model (a quick check)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for the MFU")
    ap.add_argument("--profile", choices=["reference", *METHODS], default=None)
    ap.add_argument("--json", help="write all rows here")
    ap.add_argument("--child", choices=["step", "epoch"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="sctune", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="full", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = a.device.startswith("cuda")
    a.precision = a.precision or ("bf16" if gpu else "32")
    a.step_batch = a.step_batch or (32 if gpu else 4)
    a.step_seq = a.step_seq or (1200 if gpu else 600)
    a.repeats = a.repeats or (20 if gpu else 5)
    a.warmup = a.warmup if a.warmup is not None else (3 if gpu else 1)
    a.epoch_cells = a.epoch_cells if a.epoch_cells is not None else (0 if gpu else 48)
    if a.child:
        result = child_step(a) if a.child == "step" else child_epoch(a)
        Path(a.out).write_text(json.dumps(result))
        return 0
    a.passthrough = [
        f"--device={a.device}",
        f"--precision={a.precision}",
        f"--step-batch={a.step_batch}",
        f"--step-seq={a.step_seq}",
        f"--repeats={a.repeats}",
        f"--warmup={a.warmup}",
        f"--epoch-cells={a.epoch_cells}",
        f"--epoch-batch={a.epoch_batch}",
        f"--max-seq-len={a.max_seq_len}",
        f"--dropout={a.dropout}",
    ]
    a.passthrough += ["--small"] * a.small + ["--compile"] * a.compile
    a.passthrough += [] if a.bucket else ["--no-bucket"]
    if a.profile:
        a.passthrough.append(f"--profile={a.profile}")
        impl = "reference" if a.profile == "reference" else "sctune"
        r = run_child(a, "step", impl, a.profile)
        print(r.get("profile") or r)
        return 0 if "profile" in r else 1
    shape = "small" if a.small else "whole-human"
    print(
        f"scGPT {shape} size, precision {a.precision}, device {a.device}, dropout {a.dropout}; "
        f"step: {a.step_batch} cells x {a.step_seq} tokens, forward+backward+Adam, median of "
        f"{a.repeats}",
        flush=True,
    )
    step_rows: list[dict[str, Any]] = []
    epoch_rows: list[dict[str, Any]] = []
    if "step" in a.sections:
        for impl, m in [("reference", "full")] + [("sctune", m) for m in a.methods]:
            r = run_child(a, "step", impl, m)
            step_rows.append(r)
            print(f"  step {_label(r)}: {r.get('median_s', r.get('error'))}", flush=True)
        print("\n" + step_table(step_rows, a), flush=True)
    if "epoch" in a.sections:
        if not DATA.is_file():
            print(f"\nepoch: skipped ({DATA} not found)")
        else:
            n = a.epoch_cells or "all"
            print(
                f"\nreal-data epoch: pbmc3k_seurat_labeled, {n} cells, batch {a.epoch_batch}, "
                f"max_seq_len {a.max_seq_len} (reference pads every cell to it; sctune pads per "
                f"{'length-bucketed ' if a.bucket else ''}batch)",
                flush=True,
            )
            for impl, m in [("reference", "full")] + [("sctune", m) for m in a.epoch_methods]:
                r = run_child(a, "epoch", impl, m)
                epoch_rows.append(r)
                print(f"  epoch {_label(r)}: {r.get('epoch_s', r.get('error'))}", flush=True)
            print("\n" + epoch_table(epoch_rows), flush=True)
    ddp_rows: list[dict[str, Any]] = []
    if "ddp" in a.sections:
        print(
            f"\nDDP on CPU (gloo): quickstart, {a.ddp_epochs} epochs, 1 thread per process",
            flush=True,
        )
        ddp_rows = ddp_scaling(a.ddp_epochs)
        print("\n" + ddp_table(ddp_rows), flush=True)
    print("\ntargets:")
    for line in targets(step_rows, epoch_rows):
        print("  " + line)
    if a.json:
        Path(a.json).write_text(json.dumps(step_rows + epoch_rows + ddp_rows, indent=1) + "\n")
    return 1 if any("error" in r for r in step_rows + epoch_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
