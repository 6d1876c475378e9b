"""The training engine on HF accelerate: devices, mixed precision, DDP via ``accelerate launch``.

Adam + per-epoch StepLR + gradient clipping + early stopping on a validation metric, keeping the
best-validation weights (methods.md section 11). A gradient audit runs at the first step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    Sampler,
    TensorDataset,
    WeightedRandomSampler,
)

from sctune.core.assembly import Assembled
from sctune.core.audit import GradientAudit, audit_gradients
from sctune.core.rundir import CHECKPOINT_FILE
from sctune.core.task import StepOutput, monitor_direction


@dataclass
class RunContext:
    """What hooks see: the recipe, the run directory, the assembled model and the accelerator."""

    recipe: Any
    run_dir: Path
    assembled: Assembled | None = None
    accelerator: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    audit: GradientAudit | None
    seconds: float
    peak_memory_mb: float | None


def make_accelerator(trainer_cfg: Any) -> Any:
    from accelerate import Accelerator

    mp = {"32": "no", "16-mixed": "fp16", "bf16-mixed": "bf16"}[trainer_cfg.precision]
    cpu = trainer_cfg.device == "cpu" or (
        trainer_cfg.device == "auto" and not torch.cuda.is_available()
    )
    if cpu and mp == "fp16":
        mp = "no"  # fp16 autocast is a GPU feature; bf16 works on CPU
    from accelerate.utils import DataLoaderConfiguration

    # split_batches: under N processes each step's batch of batch_size cells is split N ways, so
    # N processes take the same steps on the same batches as one process (not N times fewer
    # steps on N times larger batches)
    return Accelerator(
        cpu=cpu,
        mixed_precision=mp,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )


class GlobalBatchNorm1d(torch.nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span the batch on every process (DDP).

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors (gloo), so this all-reduces the per-feature
    sums, sums of squares and counts with an autograd-aware all-reduce, on any device. Outside
    distributed training (or in eval mode) it is a plain BatchNorm1d; parameters, buffers and
    state-dict keys are BatchNorm1d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        if dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        count = xf.new_tensor([float(x.shape[0])])
        stats = all_reduce(torch.cat([xf.sum(0), (xf * xf).sum(0), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            m = self.momentum if self.momentum is not None else 0.1
            with torch.no_grad():
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)  # type: ignore[union-attr]
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        y = (xf - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def globalise_batchnorm(module: torch.nn.Module) -> int:
    """Turn every ``BatchNorm1d`` in ``module`` into :class:`GlobalBatchNorm1d` in place (the
    class changes, the tensors stay); returns how many."""
    n = 0
    for m in module.modules():
        if type(m) is torch.nn.BatchNorm1d:
            m.__class__ = GlobalBatchNorm1d
            n += 1
    return n


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of cells of similar length, in random order: less padding, still stochastic.

    Each epoch draws an order of the cells from ``generator`` (a permutation, or with
    ``weights`` a weighted draw with replacement, as ``WeightedRandomSampler``), cuts it into
    pools of ``pool_batches`` batches, sorts each pool by length jittered by up to ``jitter``
    (5 %: cells of similar length land in different batches every epoch), cuts the pool into
    batches and shuffles the batches, keeping a short batch (if any) last, where a
    multi-process split expects it. Every cell of an epoch's draw is in exactly one batch; all
    randomness comes from ``generator`` at the start of the epoch, so saving its state between
    epochs resumes the exact sequence.
    """

    drop_last = False

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        generator: torch.Generator,
        *,
        weights: np.ndarray | None = None,
        pool_batches: int = 50,
        jitter: float = 0.05,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.jitter = jitter
        self.batch_size = batch_size
        self.generator = generator
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.pool = max(1, pool_batches) * batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=self.generator)
        else:
            order = torch.randperm(n, generator=self.generator)
        idx = order.numpy()
        noise = torch.rand(n, generator=self.generator, dtype=torch.float64).numpy()
        key = self.lengths[idx] * (1.0 + self.jitter * (2.0 * noise - 1.0))
        batches: list[np.ndarray] = []
        for start in range(0, n, self.pool):
            pool = np.argsort(key[start : start + self.pool], kind="stable") + start
            batches += [idx[pool[i : i + bs]] for i in range(0, len(pool), bs)]
        shuffled = [batches[b] for b in torch.randperm(len(batches), generator=self.generator)]
        shuffled.sort(key=lambda b: len(b) < bs)  # stable: only a short batch moves to the end
        for batch in shuffled:
            yield batch.tolist()


class GroupBatchSampler(Sampler[list[int]]):
    """Batches that each hold cells of one group (e.g. one experimental batch), in random order.

    Each epoch shuffles the cells of every group and cuts them into full batches; the leftover
    cells of all groups (fewer than a batch per group) are shuffled together into the last
    batches, so every cell is used once per epoch and at most ``n_groups`` tail batches mix
    groups (a short one last, where a multi-process split expects it). All randomness comes
    from ``generator``, so saving its state between epochs resumes the exact sequence.
    """

    drop_last = False

    def __init__(self, groups: np.ndarray, batch_size: int, generator: torch.Generator) -> None:
        self.groups = np.asarray(groups)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(len(self.groups) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        bs = self.batch_size
        full: list[np.ndarray] = []
        rest: list[np.ndarray] = []
        for g in np.unique(self.groups):
            members = np.flatnonzero(self.groups == g)
            members = members[torch.randperm(len(members), generator=self.generator).numpy()]
            cut = len(members) - len(members) % bs
            full += [members[i : i + bs] for i in range(0, cut, bs)]
            rest.append(members[cut:])
        order = [full[i] for i in torch.randperm(len(full), generator=self.generator)]
        tail = np.concatenate(rest) if rest else np.zeros(0, dtype=np.int64)
        tail = tail[torch.randperm(len(tail), generator=self.generator).numpy()]
        order += [tail[i : i + bs] for i in range(0, len(tail), bs)]
        for batch in order:
            yield batch.tolist()


def _loader(
    ds: Dataset,
    batch: int,
    collate: Callable | None,
    *,
    shuffle: bool = False,
    weights: np.ndarray | None = None,
    generator: torch.Generator | None = None,
    lengths: np.ndarray | None = None,
    pool_batches: int = 50,
) -> DataLoader:
    """Shuffled (optionally weighted) batches; with ``lengths``, length-bucketed ones."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if shuffle and lengths is not None:
        bucketed = LengthBucketSampler(
            lengths, batch, gen, weights=weights, pool_batches=pool_batches
        )
        return DataLoader(ds, batch_sampler=bucketed, collate_fn=collate)
    sampler = None
    if weights is not None:
        sampler = WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double),  # type: ignore[arg-type]
            len(weights),
            replacement=True,
            generator=gen,
        )
        shuffle = False
    return DataLoader(
        ds,
        batch_size=batch,
        shuffle=shuffle,
        sampler=sampler,
        collate_fn=collate,
        generator=gen if shuffle else None,
    )


def model_input_arrays(
    task: Any, targets: np.ndarray, prepared: Any, config: Any
) -> dict[str, np.ndarray]:
    """:meth:`Task.model_inputs` of the cells of ``targets``, checked against what the task
    declares (:meth:`Task.model_input_fields`): one integer per cell under each name."""
    from sctune.core.errors import PluginError

    declared = set(type(task).model_input_fields(config))
    got = task.model_inputs(targets, prepared, config) or {}
    if set(got) != declared:
        raise PluginError(
            f"task '{task.name}': model_inputs() returned {sorted(got)}, but "
            f"model_input_fields() declares {sorted(declared)}",
            hint="declare every field model_inputs() returns in model_input_fields(config)",
        )
    out = {}
    for name, values in got.items():
        arr = np.asarray(values)
        if arr.shape != (len(targets),) or arr.dtype.kind not in "iub":
            raise PluginError(
                f"task '{task.name}': model input '{name}' must hold one integer per cell "
                f"({len(targets)}), got {arr.dtype} of shape {arr.shape}"
            )
        out[name] = arr.astype(np.int64)
    return out


def add_model_inputs(
    batch: dict[str, torch.Tensor], inputs: dict[str, np.ndarray] | None, rows: Any
) -> dict[str, torch.Tensor]:
    """Add the task's model inputs of ``rows`` (positions in ``inputs``) to ``batch``."""
    for name, values in (inputs or {}).items():
        if name in batch:
            from sctune.core.errors import PluginError

            raise PluginError(
                f"the task's model input '{name}' has the name of a field the backbone's "
                f"batches already hold ({', '.join(sorted(batch))})",
                hint="give the task's model input another name",
            )
        batch[name] = torch.as_tensor(values[np.asarray(rows, dtype=np.int64)])
    return batch


class _Indexed(Dataset):
    """Tokenized cells + the task's targets (any dtype: classes, values) + its model inputs."""

    def __init__(
        self, cells: Any, targets: np.ndarray, inputs: dict[str, np.ndarray] | None = None
    ) -> None:
        self.cells, self.targets = cells, np.asarray(targets)
        self.inputs = inputs or {}

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.cells[i], i

    def collate(self, items: list[tuple[Any, int]]) -> dict[str, torch.Tensor]:
        batch = self.cells.collate([x for x, _ in items])
        rows = [i for _, i in items]
        add_model_inputs(batch, self.inputs, rows)
        batch["targets"] = torch.as_tensor(self.targets[rows])
        return batch


def checkpoint_units(backbone: Any) -> list[Any]:
    """The modules activation checkpointing recomputes: each transformer layer the backbone calls.

    scGPT: every encoder layer (``backbone.layers``); scBERT: every attention and feed-forward
    module of its ``(attention, feed-forward)`` pairs; Geneformer (HF BERT, whose layers the
    backbone calls piecewise): every layer's ``attention``, ``intermediate`` and ``output``.
    """
    from torch import nn

    bert = getattr(backbone, "bert", None)
    if bert is not None and hasattr(bert, "encoder"):
        return [
            getattr(layer, part)
            for layer in bert.encoder.layer
            for part in ("attention", "intermediate", "output")
        ]
    layers = getattr(backbone, "layers", None)
    if layers is None:
        return []
    units: list[Any] = []
    for block in layers:
        if isinstance(block, (nn.ModuleList, nn.Sequential)):
            units.extend(block)
        else:
            units.append(block)
    return units


def enable_activation_checkpointing(backbone: Any) -> int:
    """Recompute :func:`checkpoint_units` in the backward pass (training only); returns their
    number. Parameters and state-dict keys are unchanged; dropout masks are replayed exactly."""
    from torch.utils.checkpoint import checkpoint

    units = checkpoint_units(backbone)
    for unit in units:
        if getattr(unit, "_sctune_checkpointed", False):
            continue
        original = unit.forward

        def forward(*args: Any, _f: Callable = original, _m: Any = unit, **kwargs: Any) -> Any:
            if _m.training and torch.is_grad_enabled():
                return checkpoint(_f, *args, use_reentrant=False, **kwargs)
            return _f(*args, **kwargs)

        unit.forward = forward
        unit._sctune_checkpointed = True
    return len(units)


def _split_batch(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    return inputs, batch["targets"]


def _length_sorted_batches(cells: Any, batch_size: int) -> Iterator[tuple[np.ndarray, Any]]:
    """``(row indices, collated batch)`` with cells sorted by token count, so each batch pads to
    about its own length (inference only: results go back to the rows they came from)."""
    n = len(cells)
    lengths = cells.lengths() if hasattr(cells, "lengths") else None
    order = np.arange(n) if lengths is None else np.argsort(lengths, kind="stable")
    for lo in range(0, n, batch_size):
        idx = order[lo : lo + batch_size]
        yield idx, cells.collate([cells[int(i)] for i in idx])


@torch.no_grad()
def embed_and_score(
    model: Any,
    cells: Any,
    batch_size: int,
    accelerator: Any,
    *,
    merged_head_only: bool = False,
    inputs: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell embeddings and head outputs for every cell (eval mode, original order).

    ``inputs``: the task's model inputs of every cell (:func:`model_input_arrays`), added to
    each batch."""
    model.eval()
    embs: np.ndarray | None = None
    logits: np.ndarray | None = None
    for idx, batch in _length_sorted_batches(cells, batch_size):
        add_model_inputs(batch, inputs, idx)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            cell, out = model(batch)
        cell, out = cell.float().cpu().numpy(), out.float().cpu().numpy()
        if embs is None or logits is None:
            embs = np.zeros((len(cells), *cell.shape[1:]), dtype=cell.dtype)
            logits = np.zeros((len(cells), *out.shape[1:]), dtype=out.dtype)
        embs[idx], logits[idx] = cell, out
    if embs is None or logits is None:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return embs, logits


@torch.no_grad()
def score_reusing_embeddings(
    model: Any,
    cells: Any,
    batch_size: int,
    accelerator: Any,
    rows: np.ndarray,
    embeddings: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`embed_and_score` for a head on the frozen backbone's cell embedding (head-only),
    when ``embeddings`` of ``rows`` are already known: only the other cells go through the
    backbone, and the head scores every embedding."""
    n = len(cells)
    emb = np.zeros((n, embeddings.shape[1]), dtype=np.float32)
    emb[rows] = embeddings
    todo = np.setdiff1d(np.arange(n), rows)
    if len(todo):
        emb[todo] = embed_only(model.backbone, cells.subset(todo), batch_size, accelerator)
    model.head.eval()
    out = []
    for lo in range(0, n, batch_size):
        x = torch.as_tensor(emb[lo : lo + batch_size]).to(accelerator.device)
        with accelerator.autocast():
            out.append(model.head(x).float().cpu().numpy())
    return emb, np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def embed_only(backbone: Any, cells: Any, batch_size: int, accelerator: Any) -> np.ndarray:
    backbone.eval()
    out: np.ndarray | None = None
    for idx, batch in _length_sorted_batches(cells, batch_size):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            cell = backbone(batch).cell.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(cells), *cell.shape[1:]), dtype=cell.dtype)
        out[idx] = cell
    return out if out is not None else np.zeros((0, 0), np.float32)


def fit(
    *,
    ctx: RunContext,
    task: Any,
    task_cfg: Any,
    prepared: Any,
    train: Any,
    valid: Any,
    train_targets: np.ndarray,
    valid_targets: np.ndarray,
    trainer_cfg: Any,
    seed: int,
    cache_embeddings: bool,
    on_epoch: Callable[[int, dict[str, float]], None],
    log_path: Path,
    progress: bool = True,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Train ``ctx.assembled`` and restore its best-validation weights.

    With ``checkpoint`` (a folder) the trainable state, optimizer, scheduler, early-stopping
    state, RNG states and the sampler's generator are saved after every epoch; ``resume=True``
    loads them and continues, giving the same weights and metrics as an uninterrupted run.
    """
    acc = ctx.accelerator
    asm = ctx.assembled
    assert asm is not None
    model = asm.model
    torch.manual_seed(seed)
    weights = task.sample_weights(prepared, task_cfg)

    if cache_embeddings:  # head-only: frozen backbone runs once, in eval mode
        model.backbone.to(acc.device)
        tr = torch.as_tensor(embed_only(model.backbone, train, trainer_cfg.eval_batch_size, acc))
        va = (
            torch.as_tensor(embed_only(model.backbone, valid, trainer_cfg.eval_batch_size, acc))
            if len(valid)
            else torch.zeros(0, tr.shape[1])
        )
        # kept for the evaluation after training, which then embeds only the other cells
        ctx.extra["backbone_embeddings"] = {"train": tr.numpy(), "valid": va.numpy()}
        train_ds: Dataset = TensorDataset(tr, torch.as_tensor(train_targets))
        valid_ds: Dataset = TensorDataset(va, torch.as_tensor(valid_targets))
        collate = None
        net: Any = model.head
    else:
        train_ds = _Indexed(
            train, train_targets, model_input_arrays(task, train_targets, prepared, task_cfg)
        )
        valid_ds = _Indexed(
            valid, valid_targets, model_input_arrays(task, valid_targets, prepared, task_cfg)
        )
        collate = train_ds.collate
        net = model
    sampler_gen = torch.Generator().manual_seed(seed)
    bucketing = getattr(trainer_cfg, "length_bucketing", False) and not cache_embeddings
    groups = task.sampling_groups(train_targets, prepared, task_cfg)
    if groups is not None:  # the task asks for batches of one group each
        train_dl = DataLoader(
            train_ds,
            batch_sampler=GroupBatchSampler(groups, trainer_cfg.batch_size, sampler_gen),
            collate_fn=collate,
        )
    else:
        train_dl = _loader(
            train_ds,
            trainer_cfg.batch_size,
            collate,
            shuffle=True,
            weights=weights,
            generator=sampler_gen,
            lengths=train.lengths() if bucketing and hasattr(train, "lengths") else None,
            pool_batches=getattr(trainer_cfg, "bucket_pool", 50),
        )
    eval_batch = -(-trainer_cfg.eval_batch_size // acc.num_processes) * acc.num_processes
    valid_dl = _loader(valid_ds, eval_batch, getattr(valid_ds, "collate", None))

    if acc.num_processes > 1:
        _check_split(trainer_cfg.batch_size, acc.num_processes)
        globalise_batchnorm(net)  # statistics over the whole batch, not each process's part
    if getattr(trainer_cfg, "activation_checkpointing", False) and not cache_embeddings:
        enable_activation_checkpointing(model.backbone)
    if getattr(trainer_cfg, "compile", False):
        net.compile()  # in place: parameter names and state-dict keys stay as they are
    params = [p for p in net.parameters() if p.requires_grad]
    ocfg = trainer_cfg.optimizer
    opt_cls = torch.optim.AdamW if ocfg.name == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=ocfg.lr, eps=ocfg.eps, weight_decay=ocfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_targets) / trainer_cfg.batch_size))
    scheduler = _scheduler(optimizer, trainer_cfg, steps_per_epoch)
    net, optimizer, train_dl, valid_dl = acc.prepare(net, optimizer, train_dl, valid_dl)

    def forward(batch: Any) -> StepOutput:
        if cache_embeddings:
            emb, y = batch
            logits = net(emb)
        else:
            inputs, y = _split_batch(batch)
            _, logits = net(inputs)
        return StepOutput(task.loss(logits, y, prepared, task_cfg), logits, y)

    es = trainer_cfg.early_stopping
    best_val, best_epoch, bad_epochs = None, -1, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    audit: GradientAudit | None = None
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    prog = _progress(progress and acc.is_main_process)
    task_id = (
        prog.add_task("training", total=trainer_cfg.epochs * steps_per_epoch) if prog else None
    )
    first_epoch, stopped = 0, False
    if resume and checkpoint is not None:
        saved = _load_checkpoint(checkpoint)
        unwrapped = acc.unwrap_model(net)
        unwrapped.load_state_dict(saved["model"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        best_val, best_epoch, bad_epochs = saved["best_val"], saved["best_epoch"], saved["bad"]
        best_state, history, stopped = saved["best_state"], saved["history"], saved["stopped"]
        audit = GradientAudit.from_dict(saved["audit"]) if saved["audit"] else None
        _set_rng(saved["rng"])
        sampler_gen.set_state(saved["sampler"])
        first_epoch = len(history)
        log_path.write_text("".join(json.dumps(m) + "\n" for m in history))
        start -= history[-1]["seconds"] if history else 0.0
        if prog is not None:
            prog.update(task_id, completed=first_epoch * steps_per_epoch)
    with prog or _Null():
        for epoch in range(first_epoch, 0 if stopped else trainer_cfg.epochs):
            net.train()
            losses, seen = 0.0, 0
            tokens, slots = 0, 0  # real and padded token positions: the padding fraction
            for batch in train_dl:
                if isinstance(batch, dict) and "padding_mask" in batch:
                    pad = batch["padding_mask"]
                    slots += pad.numel()
                    tokens += pad.numel() - int(pad.sum())
                with acc.autocast():
                    out = forward(batch)
                optimizer.zero_grad(set_to_none=True)
                acc.backward(out.loss)
                if audit is None:
                    audit = audit_gradients(acc.unwrap_model(net))
                    audit.raise_if_bad()
                if trainer_cfg.grad_clip:
                    acc.clip_grad_norm_(params, trainer_cfg.grad_clip)
                optimizer.step()
                if scheduler is not None and trainer_cfg.scheduler.name != "step":
                    scheduler.step()
                n = int(out.targets.shape[0])
                losses += float(out.loss.detach()) * n
                seen += n
                if prog is not None:
                    prog.update(
                        task_id,
                        advance=1,
                        description=f"epoch {epoch + 1}/{trainer_cfg.epochs} loss {losses / max(seen, 1):.4f}",
                    )
            if scheduler is not None and trainer_cfg.scheduler.name == "step":
                scheduler.step()
            metrics = {
                "epoch": epoch + 1,  # counted from 1, as the console shows
                "train/loss": losses / max(seen, 1),
                "lr": optimizer.param_groups[0]["lr"],
            }
            if slots:
                metrics["train/padding_fraction"] = 1.0 - tokens / slots
            metrics.update(_validate(net, valid_dl, forward, acc, task, prepared, task_cfg))
            metrics["seconds"] = time.perf_counter() - start
            history.append(metrics)
            with log_path.open("a") as fh:
                fh.write(json.dumps(metrics) + "\n")
            monitor = es.monitor if es else "valid/loss"
            value = metrics.get(monitor)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                value = metrics["train/loss"]  # no validation cells: the training loss decides
                monitor = "train/loss"
            delta = es.min_delta if es else 0.0
            better = best_val is None or (
                value > best_val + delta
                if monitor_direction(type(task), monitor) == "max"
                else value < best_val - delta
            )
            if better:
                best_val, best_epoch, bad_epochs = value, epoch + 1, 0
                best_state = _trainable_state(acc.unwrap_model(net))
            else:
                bad_epochs += 1
                stopped = bool(es and bad_epochs >= es.patience)
            if checkpoint is not None and acc.is_main_process:
                unwrapped = acc.unwrap_model(net)
                _save_checkpoint(
                    checkpoint,
                    {
                        "model": _trainable_state(unwrapped),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "best_val": best_val,
                        "best_epoch": best_epoch,
                        "bad": bad_epochs,
                        "best_state": best_state,
                        "history": history,
                        "stopped": stopped,
                        "audit": audit.as_dict() if audit is not None else None,
                        "rng": _get_rng(),
                        "sampler": sampler_gen.get_state(),
                    },
                )
            on_epoch(epoch + 1, metrics)  # after the checkpoint: a failing hook loses no epoch
            if prog is not None:
                prog.console.log(_fmt(metrics))
            if stopped:
                if prog is not None:
                    prog.console.log(
                        f"early stopping at epoch {epoch + 1}: no {monitor} improvement for {es.patience} epochs"
                    )
                break
    if best_state is not None:
        acc.unwrap_model(net).load_state_dict(best_state, strict=False)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return FitResult(history, best_epoch, audit, time.perf_counter() - start, peak)


def _check_split(batch_size: int, processes: int) -> None:
    from sctune.core.errors import RecipeError

    if batch_size % processes:
        raise RecipeError(
            f"trainer.batch_size: {batch_size} cells cannot be split evenly over {processes} "
            f"processes (each step's batch is shared out, so it must be a multiple of "
            f"{processes})",
            hint=f"set trainer.batch_size to e.g. {-(-batch_size // processes) * processes}",
        )


def _trainable_state(module: Any) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters and every buffer (e.g. BatchNorm running stats)."""
    keep = {n for n, p in module.named_parameters() if p.requires_grad}
    keep |= {n for n, _ in module.named_buffers()}
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k in keep}


def _get_rng() -> dict[str, Any]:
    import random

    state: tuple[Any, ...] = tuple(np.random.get_state())
    kind, keys, pos, has_gauss, gauss = state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.as_tensor(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _set_rng(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _save_checkpoint(folder: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(folder / CHECKPOINT_FILE)


def _load_checkpoint(folder: Path) -> dict[str, Any]:
    from sctune.core.errors import CheckpointError

    path = folder / CHECKPOINT_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"--resume: the checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc})",
            hint="start again with output.overwrite=true",
        ) from exc


@torch.no_grad()
def _validate(
    net: Any, dl: Any, forward: Callable, acc: Any, task: Any, prepared: Any, task_cfg: Any
) -> dict[str, float]:
    """Validation loss and the task's validation metrics, gathered over all processes (every
    rank sees the same numbers, so early stopping decides identically under DDP)."""
    net.eval()
    losses, outputs, ys = [], [], []
    for batch in dl:
        with acc.autocast():
            out = forward(batch)
        k = out.targets.shape[0]
        loss = out.loss.detach().float().reshape(1).expand(k)
        loss, z, y = acc.gather_for_metrics((loss, out.logits.float(), out.targets))
        losses.append(loss.cpu())
        outputs.append(z.cpu())
        ys.append(y.cpu())
    if not ys:
        return {}
    y, z = torch.cat(ys).numpy(), torch.cat(outputs).numpy()
    metrics = {"valid/loss": float(torch.cat(losses).mean())}
    for key, value in task.validation_metrics(z, y, prepared, task_cfg).items():
        metrics[f"valid/{key}"] = float(value)
    return metrics


def _scheduler(optimizer: Any, cfg: Any, steps_per_epoch: int) -> Any:
    s = cfg.scheduler
    if s.name == "none":
        return None
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=s.gamma)
    total = max(1, cfg.epochs * steps_per_epoch)

    def lam(step: int) -> float:
        if step < s.warmup_steps:
            return (step + 1) / max(1, s.warmup_steps)
        t = (step - s.warmup_steps) / max(1, total - s.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lam)


def _fmt(m: dict[str, float]) -> str:
    shown = [k for k in m if k.startswith(("train/", "valid/"))]
    return f"epoch {int(m['epoch'])}: " + "  ".join(f"{k} {m[k]:.4f}" for k in shown)


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None
