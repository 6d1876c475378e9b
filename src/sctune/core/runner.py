"""One run, start to finish: data, split, tokens, model, training, evaluation, run directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sctune.core import artifacts as A
from sctune.core import provenance
from sctune.core.assembly import assemble, count_parameters
from sctune.core.backbone import resolve_config
from sctune.core.data import describe_path, load_data, split_cells, write_split
from sctune.core.registry import distribution_version, plugin_versions
from sctune.core.rundir import CHECKPOINT_DIR, RunResult


def _components(rec: Any, registry: Any) -> tuple[Any, list[tuple[Any, Any]], Any]:
    backbone = registry.instance("backbone", rec.backbone.name)
    adapters = [(registry.instance("adapter", a.name), a.config) for a in rec.adapters]
    task = registry.instance("task", rec.task.name)
    return backbone, adapters, task


@dataclass
class Inputs:
    """Everything a run needs before the model is built: data, split, resolved backbone options,
    tokens and the task's state. :func:`prepare_inputs` makes it for ``sctune run`` and
    ``sctune validate`` alike, so validate refuses exactly what run would refuse."""

    backbone: Any
    adapters: list[tuple[Any, Any]]
    task: Any
    data: Any
    split: dict[str, np.ndarray]
    bcfg: Any
    tokens: Any
    prepared: Any
    targets: np.ndarray
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)


def prepare_inputs(
    rec: Any,
    registry: Any,
    run_dir: Path,
    *,
    log: Callable[[str], None] = lambda m: None,
    progress: bool = False,
) -> Inputs:
    """Load and check the data, split it, resolve the backbone, tokenize, prepare the task.

    Messages go to ``log`` as they happen (``warning: ...`` for warnings) and are also returned.
    Raises :class:`~sctune.core.errors.SctuneError` for anything that would stop the run.
    """
    seed = rec.envelope.seed
    backbone, adapters, task = _components(rec, registry)
    info: list[str] = []
    warnings: list[str] = []

    def say(line: str) -> None:
        info.append(line)
        log(line)

    def warn(line: str) -> None:
        warnings.append(line)
        log(f"warning: {line}")

    from sctune.core.streaming import is_on_disk

    data = _load(rec)  # with data.stream, X stays in the file (sctune.core.streaming)
    expr = data.expression
    streamed = expr.X.data if is_on_disk(expr) else None
    say(
        f"data: {expr.n_cells} cells x {len(expr.genes)} genes from {describe_path(rec.data.path)} ({data.source}: {expr.kind})"
    )
    for note in data.notes:
        say(f"  note: {note}")
    split = split_cells(data.obs, data.labels, rec.data.split, seed=seed)
    if len(split["test"]) == 0:
        from sctune.core.errors import DataError

        raise DataError(
            f"data.split: the test split has no cells (method '{rec.data.split.method}', "
            f"test fraction {rec.data.split.test}, {len(data.labels)} cells); the metrics "
            "would have nothing to measure",
            hint="raise data.split.test (e.g. 0.2), or give a split column/file with test cells",
        )
    say("split: " + ", ".join(f"{part} {len(idx)}" for part, idx in split.items()) + " cells")
    es = rec.trainer.early_stopping
    monitor = es.monitor if es is not None else "valid/loss"
    if len(split["valid"]) == 0 and not monitor.startswith("train/"):
        stops = "for stopping and " if es is not None else ""
        say(
            f"  note: no validation cells, so {monitor} cannot be measured: train/loss stands in, "
            f"{stops}for the epoch whose weights are kept (raise data.split.valid to choose on "
            "held-out cells)"
        )
    pre = task.preflight(data.labels, split, rec.task.config, obs=data.obs)
    for line in pre.info:
        say(line)
    for w in pre.warnings:
        warn(w)
    pre.raise_errors()
    if rec.data.hvg is not None:
        from dataclasses import replace

        from sctune.core.preprocess import keep_genes, select_hvg

        before = len(expr.genes)
        if streamed is not None:
            chosen = streamed.select_hvg(split["train"], rec.data.hvg)
            streamed.keep = chosen
            expr = streamed.expression()
        else:
            chosen = select_hvg(expr, split["train"], rec.data.hvg)
            expr = keep_genes(expr, chosen)
        data = replace(data, expression=expr)
        say(
            f"genes: kept the {len(chosen):,} most variable of {before:,} genes "
            "(data.hvg, chosen on the training cells)"
        )
    bcfg = resolve_config(
        backbone,
        rec.backbone.config,
        genes=list(expr.genes),
        run_dir=run_dir,
        expression=_training_cells(expr, split),
    )
    if backbone.randomly_initialised(rec.backbone.config):
        say(
            f"backbone: '{backbone.name}' is RANDOMLY INITIALISED (no checkpoint): "
            "numbers measure the architecture + adapter, not pretrained knowledge"
        )
    _refuse_untrained_stems(backbone, bcfg, adapters)
    from sctune.core.tokencache import tokenize_cached, tokenize_stream

    if streamed is not None:
        import contextlib

        from sctune.core.predictor import cell_progress

        bar = cell_progress(progress, streamed.n_cells, "tokenizing")
        with bar or contextlib.nullcontext():
            tokens = tokenize_stream(
                backbone,
                streamed,
                bcfg,
                seed=seed,
                enabled=rec.data.cache_tokens,
                cache_dir=rec.data.cache_dir,
                log=say,
                progress=None if bar is None else lambda n: bar.update(bar.task_ids[0], advance=n),
            )
    else:
        tokens = tokenize_cached(
            backbone,
            expr,
            bcfg,
            seed=seed,
            enabled=rec.data.cache_tokens,
            cache_dir=rec.data.cache_dir,
            log=say,
        )
    if tokens.gene_match is not None:
        say(f"genes: {tokens.gene_match.summary()}")
    # a streamed run hands the task no matrix: the task's optional expression extras say so
    given = None if streamed is not None else expr
    prepared = task.prepare(data.labels, split, rec.task.config, obs=data.obs, expression=given)
    targets = task.targets(data.labels, prepared, obs=data.obs, expression=given)
    return Inputs(
        backbone, adapters, task, data, split, bcfg, tokens, prepared, targets, warnings, info
    )


def _refuse_untrained_stems(backbone: Any, bcfg: Any, adapters: list[tuple[Any, Any]]) -> None:
    """A method that trains nothing must not embed through a freshly initialised module."""
    untrained = [a.name for a, _ in adapters if not a.trains]
    if not untrained:
        return
    import torch

    with torch.device("meta"):
        fresh = tuple(getattr(backbone.build(bcfg, load_weights=False), "fresh_modules", ()))
    if fresh:
        from sctune.core.errors import CompatibilityError

        fix = ", ".join(f"backbone.{k}={v}" for k, v in backbone.parameter_free_options.items())
        raise CompatibilityError(
            f"adapter '{untrained[0]}' trains nothing, but with these options backbone "
            f"'{backbone.name}' embeds cells through newly initialised module(s) "
            f"{', '.join(repr(m) for m in fresh)}, which would stay random",
            hint=(f"set {fix} (a pooling without new parameters)" if fix else None)
            or "choose a backbone configuration whose cell embedding has no fresh modules",
        )


def _same_recipe_on_resume(rec: Any, path: Path, resume: bool) -> None:
    """Record the recipe a run starts with; refuse to resume it under a different one."""
    now = rec.resolved()
    now["output"].pop("overwrite", None)
    if not resume or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        A.write_json(path, now)
        return
    before = A.read_json(path)
    flat_before, flat_now = _flatten(before), _flatten(json.loads(json.dumps(now, default=str)))
    changed = sorted(
        k for k in flat_before.keys() | flat_now.keys() if flat_before.get(k) != flat_now.get(k)
    )
    if changed:
        from sctune.core.errors import RecipeError

        raise RecipeError(
            "--resume: the recipe differs from the one the interrupted run started with:\n  "
            + "\n  ".join(
                f"{k}: {flat_before.get(k)!r} then, {flat_now.get(k)!r} now" for k in changed[:10]
            ),
            hint="resume with the same recipe and overrides, or start again with "
            "output.overwrite=true",
        )


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


@dataclass
class _Outputs:
    """What the trained model says about every cell."""

    embeddings: np.ndarray
    logits: np.ndarray
    reference: np.ndarray | None  # zero-shot: the training cells' embeddings


def execute(
    rec: Any,
    registry: Any,
    run_dir: Path,
    *,
    progress: bool,
    log: Callable[[str], None],
    resume: bool = False,
) -> RunResult:
    """One run in ``run_dir``, in five phases: inputs, model, training, evaluation, files."""
    import torch

    seed = rec.envelope.seed
    torch.manual_seed(seed)
    np.random.seed(seed)
    if rec.trainer.num_threads:
        torch.set_num_threads(rec.trainer.num_threads)
    _same_recipe_on_resume(rec, run_dir / CHECKPOINT_DIR / "recipe.json", resume)

    inp = prepare_inputs(rec, registry, run_dir, log=log, progress=progress)  # 1. inputs
    write_split(
        run_dir / A.SPLIT,
        list(inp.data.expression.cell_ids),
        inp.split,
        dataset=rec.data.path,
        seed=seed,
        method=rec.data.split.method,
    )
    seen = provenance.overlap(
        dict(inp.bcfg), rec.data.path, inp.data.expression.cell_ids, inp.split["test"]
    )
    if seen and seen["test_cells_pretrained_on"]:
        log(
            f"warning: {seen['test_cells_pretrained_on']} of the {seen['test_cells']} test cells "
            f"pretrained this checkpoint ({seen['record']}): test metrics on them are "
            f"transductive; on the same data, data.split.file={seen['record']} scores on its "
            "held-out cells"
        )
    ctx = _build_model(rec, inp, run_dir, resume=resume, log=log)  # 2. model
    registry.pm.hook.sctune_before_run(run=ctx)
    fit_result = _train(rec, inp, ctx, registry, progress=progress, resume=resume)  # 3. training
    outputs = _infer(rec, inp, ctx)  # 4. evaluation
    test = inp.split["test"]
    test_metrics = inp.task.evaluate(
        logits=outputs.logits[test],
        targets=inp.targets[test],
        embeddings=outputs.embeddings[test],
        prepared=inp.prepared,
        config=rec.task.config,
        out_dir=run_dir if rec.envelope.output.plots else None,
    )
    if inp.task.exports_backbone(rec.task.config):
        test_metrics["export"] = export_backbone(inp, ctx, run_dir / EXPORT_DIR, log=log)
    if seen is not None:
        test_metrics["pretraining_cells"] = seen
    metrics = _write_run(rec, inp, ctx, registry, run_dir, fit_result, outputs, test_metrics)
    log(f"test: {inp.task.summary(test_metrics)}  ({len(test)} cells)")  # 5. files
    sizes = metrics["artifact_bytes"]
    saved = sizes["adapter"] + sizes["head"]
    log(
        f"artifact: adapter + head {saved / 1024:,.1f} KiB on disk vs backbone "
        f"{sizes['backbone_in_memory'] / 2**20:,.1f} MiB ({100 * saved / max(sizes['backbone_in_memory'], 1):.2f}%)"
    )
    files = {p.name: p for p in sorted(run_dir.iterdir())}
    return RunResult(run_dir, metrics, files, context=ctx)  # api.run calls sctune_after_run


EXPORT_DIR = "pretrained"
"""Where a run whose task exports the backbone writes it (real checkpoint format)."""


def export_backbone(
    inp: Inputs, ctx: Any, out_dir: Path, *, log: Callable[[str], None]
) -> dict[str, Any]:
    """Write the trained backbone in its real checkpoint format and check that it loads.

    Adapters that fold into the weights (LoRA) are merged first; an adapter that adds tensors the
    real format has no place for (prompts, bottlenecks) stops the export with a note (the run
    directory still holds the adapter for ``sctune predict``). The masked-modelling decoder goes
    in under the real checkpoint's names. The options that load the result are written to
    ``backbone.yaml`` and returned with the strict-load report of a fresh build from them.
    """
    import torch

    from sctune.core.objective import EncoderHead

    asm = ctx.assembled
    module = asm.model.backbone
    with torch.device("meta"):
        keys = set(inp.backbone.build(inp.bcfg, load_weights=False).state_dict())
    owner = {id(p): h for h in asm.handles for p in h.parameters}
    extra = [n for n in asm.adapter_names if n.removeprefix("backbone.") not in keys]
    handles = {id(owner[id(asm.trainable[n])]): owner[id(asm.trainable[n])] for n in extra}
    stuck = sorted({h.name for h in handles.values() if h.merge is None})
    if stuck:
        note = (
            f"not exported: adapter {', '.join(stuck)} adds tensors that the backbone's own "
            "checkpoint format has no place for (use adapter 'full' or 'lora' to export)"
        )
        log(note)
        return {"exported": False, "note": note}
    for h in handles.values():
        h.merge()
    try:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items() if k in keys}
    finally:
        for h in handles.values():
            h.unmerge()
    head = asm.model.head
    decoder = (
        head.objective.checkpoint_state()
        if isinstance(head, EncoderHead) and head.objective is not None
        else None
    )
    try:
        options = inp.backbone.export_checkpoint(state, inp.bcfg, out_dir, decoder=decoder)
    except NotImplementedError as exc:
        note = f"not exported: {exc}"
        log(note)
        return {"exported": False, "note": note}
    check = inp.backbone.build(inp.bcfg.model_copy(update=options))
    report = getattr(check, "load_report", None)
    describe = getattr(report, "summary", None)
    summary = describe() if callable(describe) else report
    written = {**state, **(decoder or {})}
    fresh = tuple(f"{m}." for m in getattr(module, "fresh_modules", ()))
    same = all(
        torch.equal(v.cpu(), written[k])
        for k, v in check.state_dict().items()
        if k in written and not k.startswith(fresh)
    )
    if not same:
        raise RuntimeError("the exported checkpoint does not reload to the trained weights")

    def rel(value: Any, base: Path) -> Any:
        path = Path(value) if isinstance(value, str) else None
        return os.path.relpath(value, base) if path is not None and path.is_absolute() else value

    relative = {k: rel(v, out_dir) for k, v in options.items()}
    (out_dir / "backbone.yaml").write_text(
        "# the backbone options that load this checkpoint; paths are relative to this folder\n"
        + yaml.safe_dump({"backbone": {"name": inp.backbone.name, **relative}}, sort_keys=False)
    )
    provenance.write(out_dir, out_dir.parent / A.SPLIT)
    files = sorted(p.name for p in out_dir.iterdir())
    log(f"exported the backbone in its real format to <run>/{EXPORT_DIR}/ ({', '.join(files)})")
    return {
        "exported": True,
        "folder": EXPORT_DIR,
        "files": files,
        "options": {k: rel(v, out_dir.parent) for k, v in options.items()},
        "decoder_tensors": len(decoder or {}),
        "reload": str(summary).replace(str(out_dir), f"<run>/{EXPORT_DIR}")
        if summary is not None
        else "built",
        "reloads_identically": same,
    }


def _build_model(
    rec: Any, inp: Inputs, run_dir: Path, *, resume: bool, log: Callable[[str], None]
) -> Any:
    """Build the backbone (saving drawn weights), apply the adapters, add the head."""
    from sctune.core.trainer import RunContext, make_accelerator

    acc = make_accelerator(rec.trainer)
    module = inp.backbone.build(inp.bcfg)
    if inp.backbone.randomly_initialised(inp.bcfg):  # the drawn weights travel with the run
        drawn = run_dir / A.BACKBONE_WEIGHTS
        if resume and drawn.is_file():
            A.load_into(module, A.load_tensors(drawn), what=f"'{drawn}'")
        else:
            A.save_tensors(drawn, module.state_dict())
    else:  # say which weights were loaded (the counterpart of "RANDOMLY INITIALISED")
        report = getattr(module, "load_report", None)
        describe = getattr(report, "summary", None)
        if callable(describe):
            log(f"backbone: '{inp.backbone.name}' pretrained weights: {describe()}")
    asm = assemble(
        inp.backbone,
        inp.bcfg,
        inp.adapters,
        inp.task,
        rec.task.config,
        inp.prepared,
        module=module,
    )
    n_train = _n_trainable(inp, asm)
    n_total = sum(p.numel() for p in asm.model.parameters())
    log(
        f"model: {n_total:,} parameters, {n_train:,} trainable ({100 * n_train / max(n_total, 1):.2f}%); "
        f"adapters: {', '.join(a.name for a in rec.adapters)}; device {acc.device}"
    )
    asm.model.to(acc.device)
    return RunContext(rec, run_dir, asm, acc)


def _trains(inp: Inputs) -> bool:
    return all(a.trains for a, _ in inp.adapters)


def _n_trainable(inp: Inputs, asm: Any) -> int:
    return sum(p.numel() for p in asm.trainable.values()) if _trains(inp) else 0


def _train(rec: Any, inp: Inputs, ctx: Any, registry: Any, *, progress: bool, resume: bool) -> Any:
    """Fit the trainable tensors (nothing for zero-shot or 0 epochs); returns the FitResult."""
    from sctune.core.trainer import fit

    if not _trains(inp) or rec.trainer.epochs == 0:
        return None
    asm, run_dir, split = ctx.assembled, ctx.run_dir, inp.split
    cache = (  # the backbone stays as built: embed once, train the head on the cache
        all(a.uses_cached_embeddings(c) for a, c in inp.adapters)
        and inp.task.head_input == "cell"
        and not asm.adapter_names
        and not any(n for n in asm.head_names if not n.startswith("head."))
    )
    writer = _tensorboard(rec, run_dir)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(k, v, epoch)
        registry.pm.hook.sctune_after_epoch(run=ctx, epoch=epoch, metrics=metrics)

    result = fit(
        ctx=ctx,
        task=inp.task,
        task_cfg=rec.task.config,
        prepared=inp.prepared,
        train=inp.tokens.subset(split["train"]),
        valid=inp.tokens.subset(split["valid"]),
        train_targets=inp.targets[split["train"]],
        valid_targets=inp.targets[split["valid"]],
        trainer_cfg=rec.trainer,
        seed=rec.envelope.seed,
        cache_embeddings=cache,
        on_epoch=on_epoch,
        log_path=run_dir / A.TRAIN_LOG,
        progress=progress,
        checkpoint=run_dir / CHECKPOINT_DIR,
        resume=resume,
    )
    if writer is not None:
        writer.close()
    if result.audit is not None:
        A.write_json(run_dir / A.AUDIT, result.audit.as_dict())
    return result


def _infer(rec: Any, inp: Inputs, ctx: Any) -> _Outputs:
    """Embeddings and head outputs of every cell; kNN transfer for methods that train nothing."""
    from sctune.core.trainer import embed_and_score, model_input_arrays

    asm = ctx.assembled
    asm.model.to(ctx.accelerator.device)
    merged = asm.merged_for_inference()
    for h in merged:
        h.merge()
    known = ctx.extra.pop("backbone_embeddings", None)  # head-only: set by fit
    if known is not None and not merged:
        from sctune.core.trainer import score_reusing_embeddings

        emb, logits = score_reusing_embeddings(
            asm.model,
            inp.tokens,
            rec.trainer.eval_batch_size,
            ctx.accelerator,
            np.concatenate([inp.split["train"], inp.split["valid"]]),
            np.concatenate([known["train"], known["valid"]]),
        )
    else:
        inputs = model_input_arrays(inp.task, inp.targets, inp.prepared, rec.task.config)
        emb, logits = embed_and_score(
            asm.model, inp.tokens, rec.trainer.eval_batch_size, ctx.accelerator, inputs=inputs
        )
    for h in merged:  # adapter-only files hold unmerged tensors
        h.unmerge()
    ref = None
    if not _trains(inp):  # zero-shot: kNN from training cells
        train = inp.split["train"]
        ref = emb[train]
        logits = inp.task.transfer(ref, inp.targets[train], emb, inp.prepared, rec.task.config)
    return _Outputs(emb, logits, ref)


def _write_run(
    rec: Any,
    inp: Inputs,
    ctx: Any,
    registry: Any,
    run_dir: Path,
    fit_result: Any,
    outputs: _Outputs,
    test_metrics: dict[str, Any],
) -> dict[str, Any]:
    """Weights, manifest, metrics, the resolved recipe, the environment and the predictions."""
    from sctune.core.environment import environment

    asm, split = ctx.assembled, inp.split
    sizes = _save_weights(
        run_dir,
        asm,
        inp.backbone,
        inp.bcfg,
        rec,
        inp.task,
        inp.prepared,
        inp.data.expression,
        outputs.reference,
        inp.targets,
        split,
    )
    trains = _trains(inp)
    metrics: dict[str, Any] = {
        "test": test_metrics,
        "n_cells": {k: int(len(v)) for k, v in split.items()},
        "parameters": {
            "total": sum(p.numel() for p in asm.model.parameters()),
            "trainable": _n_trainable(inp, asm),
            "adapter": sum(asm.trainable[n].numel() for n in asm.adapter_names) if trains else 0,
            "head": sum(asm.trainable[n].numel() for n in asm.head_names) if trains else 0,
        },
        "artifact_bytes": sizes,
        "backbone_randomly_initialised": inp.backbone.randomly_initialised(rec.backbone.config),
    }
    if fit_result is not None:
        metrics["train"] = {
            "epochs_run": len(fit_result.history),
            "best_epoch": fit_result.best_epoch,
            "seconds": round(fit_result.seconds, 2),
            "peak_gpu_memory_mb": fit_result.peak_memory_mb,
            "last": fit_result.history[-1] if fit_result.history else {},
        }
    A.write_json(run_dir / A.METRICS, metrics)
    (run_dir / A.RECIPE).write_text(
        yaml.safe_dump(_with_backbone(rec.resolved(), inp.bcfg), sort_keys=False)
    )
    names = [
        ("backbone", rec.backbone.name),
        ("task", rec.task.name),
        *[("adapter", a.name) for a in rec.adapters],
    ]
    acc = ctx.accelerator
    env = {
        **environment(),
        "plugins": plugin_versions(registry, names),
        "accelerate": distribution_version("accelerate"),
        "num_processes": acc.num_processes,
        "distributed_type": str(acc.distributed_type),
        "device": str(acc.device),
    }
    A.write_json(run_dir / A.ENV, env)
    if rec.envelope.output.predictions:
        columns = inp.task.annotate(outputs.logits, inp.prepared)
        others = inp.task.reference_embeddings(inp.targets, inp.prepared, rec.task.config)
        _write_predictions(run_dir, rec, inp.data, split, columns, outputs.embeddings, others)
    return metrics


def _with_backbone(resolved: dict[str, Any], bcfg: Any) -> dict[str, Any]:
    resolved["backbone"] = {"name": resolved["backbone"]["name"], **bcfg.model_dump(mode="json")}
    return resolved


def _tensorboard(rec: Any, run_dir: Path) -> Any:
    if not rec.trainer.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        from sctune.core.errors import SctuneError

        raise SctuneError(
            "trainer.tensorboard: the 'tensorboard' package is not installed",
            hint="pip install 'sctune[tensorboard]', or set trainer.tensorboard=false",
        ) from exc
    return SummaryWriter(str(run_dir / "tensorboard"))


def _save_weights(
    run_dir: Path,
    asm: Any,
    backbone: Any,
    bcfg: Any,
    rec: Any,
    task: Any,
    prepared: Any,
    expr: Any,
    ref: Any,
    targets: np.ndarray,
    split: dict[str, np.ndarray],
) -> dict[str, int]:
    import torch

    state = asm.saved_state()
    sizes = {}
    sizes["adapter"] = A.save_tensors(run_dir / A.ADAPTER_WEIGHTS, state["adapter"])
    sizes["head"] = A.save_tensors(run_dir / A.HEAD_WEIGHTS, state["head"])
    weights = run_dir / A.BACKBONE_WEIGHTS
    if weights.is_file():
        sizes["backbone_random_init"] = weights.stat().st_size
    if ref is not None:
        sizes["reference"] = A.save_tensors(
            run_dir / A.REFERENCE,
            {
                "embeddings": torch.as_tensor(ref),
                "targets": torch.as_tensor(targets[split["train"]]),
            },
        )
    backbone_params = sum(p.numel() * p.element_size() for p in asm.model.backbone.parameters())
    sizes["backbone_in_memory"] = int(backbone_params)
    (run_dir / A.GENES).write_text("\n".join(expr.genes) + "\n")
    A.write_json(run_dir / A.LABELS, task.state(prepared))
    A.write_json(
        run_dir / A.MANIFEST,
        {
            "format": 1,
            "backbone": {
                "name": backbone.name,
                "config": bcfg.model_dump(mode="json"),
                "fingerprint": backbone.fingerprint(bcfg),
            },
            "adapters": [
                {"name": a.name, "config": a.config.model_dump(mode="json")} for a in rec.adapters
            ],
            "task": {"name": rec.task.name, "config": rec.task.config.model_dump(mode="json")},
            "tensors": {k: sorted(v) for k, v in state.items()},
            "backbone_weights": (
                {"file": A.BACKBONE_WEIGHTS, "sha256": A.sha256_file(weights)}
                if weights.is_file()
                else None
            ),
            "genes_sha256": A.sha256_lines(list(expr.genes)),
            "data": {
                "label_column": rec.data.label_column,
                "gene_column": rec.data.gene_column,
                "source": rec.data.source,
                "kind": rec.data.kind,
                "batch_key": rec.data.batch_key,
                "hvg": rec.data.hvg,
            },
            "run_dir": str(run_dir.resolve()),
            "seed": rec.envelope.seed,
        },
    )
    return sizes


def _write_predictions(
    run_dir: Path,
    rec: Any,
    data: Any,
    split: dict[str, np.ndarray],
    columns: dict[str, np.ndarray],
    emb: np.ndarray,
    others: dict[str, np.ndarray] | None = None,
) -> None:
    import anndata as ad

    obs = data.obs.copy()
    part = np.full(len(emb), "", dtype=object)
    for s, idx in split.items():
        part[idx] = s
    obs["sctune_split"] = part.astype(str)
    for name, values in columns.items():  # the task's own columns
        obs[name] = values
    import pandas as pd

    expr = data.expression
    var = pd.DataFrame(index=pd.Index(list(expr.genes)))
    # the identifier columns predict reads, so predictions.h5ad is a valid query for this run
    if rec.data.gene_column is not None:
        var[rec.data.gene_column] = list(expr.genes)
    if expr.gene_symbols is not None and "gene_symbol" not in var.columns:
        var["gene_symbol"] = list(expr.gene_symbols)
    if expr.gene_ids is not None and "gene_ids" not in var.columns:
        var["gene_ids"] = list(expr.gene_ids)
    from sctune.core.streaming import is_on_disk

    on_disk = is_on_disk(expr)
    out = ad.AnnData(X=None if on_disk else expr.X, obs=obs, var=var)
    out.var_names_make_unique()
    for name, values in (others or {}).items():  # the task's reference embeddings
        out.obsm[name] = np.asarray(values, dtype=np.float32)
    out.obsm["X_sctune"] = emb.astype(np.float32)
    out.uns["sctune"] = {"recipe": rec.name, "label_column": rec.data.label_column}
    for c in out.obs.columns:
        if out.obs[c].dtype == object:
            out.obs[c] = out.obs[c].astype(str)
    target = run_dir / A.PREDICTIONS
    if not on_disk:
        out.write_h5ad(target, compression="gzip")
        return
    tmp = target.with_name(target.name + ".partial")
    try:  # data.stream: X copied from the file chunk by chunk
        out.write_h5ad(tmp, compression="gzip")
        expr.X.data.write_x(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def inspect_model(rec: Any, registry: Any, *, audit: bool = True) -> dict[str, Any]:
    """Build (with real weights) and report parameters; optionally one audited backward pass."""
    import tempfile

    import torch

    backbone, adapters, task = _components(rec, registry)
    data = _load(rec)
    split = split_cells(data.obs, data.labels, rec.data.split, seed=rec.envelope.seed)
    from sctune.core.streaming import is_on_disk

    given = None if is_on_disk(data.expression) else data.expression
    prepared = task.prepare(data.labels, split, rec.task.config, obs=data.obs, expression=given)
    with tempfile.TemporaryDirectory() as tmp:
        bcfg = resolve_config(
            backbone,
            rec.backbone.config,
            genes=list(data.expression.genes),
            run_dir=Path(tmp),
            expression=_training_cells(data.expression, split),
        )
        asm = assemble(backbone, bcfg, adapters, task, rec.task.config, prepared)
        model = asm.model
        per_adapter = []
        for h in asm.handles:
            ids = {id(p) for p in h.parameters}
            per_adapter.append(
                {
                    "name": h.name,
                    "trainable": sum(p.numel() for p in model.parameters() if id(p) in ids),
                    **{k: v for k, v in h.info.items() if isinstance(v, (int, float, str, bool))},
                }
            )
        report: dict[str, Any] = {
            "recipe": rec.source,
            "backbone": backbone.name,
            "adapters": per_adapter,
            "task": {"name": task.name, "describe": task.describe(prepared)},
            "task_state": task.state(prepared),
            "total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in asm.trainable.values()),
            "backbone_total": sum(p.numel() for p in model.backbone.parameters()),
            "head": sum(p.numel() for p in model.head.parameters()),
            "modules": count_parameters(model, depth=2),
            "randomly_initialised": backbone.randomly_initialised(rec.backbone.config),
        }
        published = backbone.reference_parameter_count(bcfg)
        if published is not None:
            report["reference_model_parameters"] = published
        if audit and all(a.trains for a, _ in adapters) and asm.trainable:
            from sctune.core.audit import audit_gradients

            idx = split["train"][: min(4, len(split["train"]))]
            sub = _subset_expression(data.expression, idx)
            cells = backbone.tokenize(sub, bcfg, seed=rec.envelope.seed)
            batch = cells.collate([cells[i] for i in range(len(cells))])
            from sctune.core.trainer import add_model_inputs, model_input_arrays

            y = task.targets(
                data.labels[idx],
                prepared,
                obs=data.obs.iloc[idx],
                expression=None if given is None else sub,
            )
            inputs = model_input_arrays(task, y, prepared, rec.task.config)
            add_model_inputs(batch, inputs, np.arange(len(y)))
            targets = torch.as_tensor(y)
            model.train()
            _, logits = model(batch)
            task.loss(logits, targets, prepared, rec.task.config).backward()
            result = audit_gradients(model)
            report["gradient_audit"] = result.as_dict()
    return report


def _load(rec: Any) -> Any:
    """The recipe's data: in memory, or with ``data.stream`` its cells left in the file."""
    if not rec.data.stream:
        return load_data(rec.data, seed=rec.envelope.seed)
    from sctune.core.data import LoadedData
    from sctune.core.streaming import StreamedData

    streamed = StreamedData(rec.data, seed=rec.envelope.seed)
    return LoadedData(
        streamed.expression(), streamed.labels, streamed.obs, streamed.source, streamed.notes
    )


def _training_cells(expr: Any, split: dict[str, np.ndarray]) -> Any:
    """The training cells a backbone may derive statistics from; with ``data.stream`` the
    first chunk of them, so memory stays bounded."""
    from sctune.core.streaming import is_on_disk

    train = split["train"]
    if is_on_disk(expr):
        train = np.sort(train)[: expr.X.data.chunk]
    return _subset_expression(expr, train)


def _subset_expression(expr: Any, idx: np.ndarray) -> Any:
    from dataclasses import replace

    from sctune.core.streaming import is_on_disk

    if is_on_disk(expr):  # data.stream: read these cells from the file
        return expr.X.data.expression_of(idx)

    return replace(
        expr,
        X=expr.X[idx],
        cell_ids=tuple(expr.cell_ids[i] for i in idx),
        library_size=None if expr.library_size is None else expr.library_size[idx],
    )


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
