"""The Python API. The CLI is a thin layer over these functions.

>>> from sctune import api
>>> result = api.run("quickstart", overrides=["trainer.epochs=2"])   # doctest: +SKIP
>>> result.metrics["test"]["accuracy"]                                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sctune.core.rundir import RunResult  # re-exported: api.RunResult

PathLike = str | Path


def get_registry(
    plugins: Sequence[PathLike] = (),
    *,
    autoload: bool = True,
    extra: Sequence[tuple[str, Any]] = (),
) -> Any:
    """Build a plugin manager (built-ins, entry points, local plugin files) and its registry."""
    from sctune.core.manager import get_plugin_manager
    from sctune.core.registry import Registry

    pm = get_plugin_manager(
        autoload=autoload, local_plugins=[Path(p) for p in plugins], extra_modules=extra
    )
    return Registry.build(pm)


def load(
    recipe: PathLike | dict[str, Any], overrides: Sequence[str] = (), *, registry: Any = None
) -> Any:
    """Read and validate a recipe (path, shipped name or mapping) without touching the data."""
    from sctune.core.recipe import apply_overrides, load_recipe, validate_recipe

    registry = registry or get_registry()
    if isinstance(recipe, dict):  # relative paths: against the working directory
        from sctune.core.paths import resolve_paths

        data = resolve_paths(apply_overrides(recipe, overrides), registry, Path.cwd())
        return validate_recipe(data, registry, source="<dict>")
    return load_recipe(recipe, registry, overrides)


def validate(
    recipe: PathLike | dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    registry: Any = None,
    check_data: bool = True,
) -> dict[str, Any]:
    """Validate the recipe, then (optionally) the data: file, columns, split, gene overlap.

    Returns a report ``{"recipe": ..., "errors": [], "warnings": [], "info": []}``; raises
    :class:`~sctune.core.errors.SctuneError` on the first blocking problem group.
    """
    registry = registry or get_registry()
    rec = load(recipe, overrides, registry=registry)  # also: output.dir can be made, device
    report: dict[str, Any] = {"recipe": rec.source, "warnings": [], "info": []}
    out = Path(rec.envelope.output.dir or Path("runs") / rec.name)
    if out.is_dir() and any(out.iterdir()) and not rec.envelope.output.overwrite:
        report["warnings"].append(
            f"output.dir: run directory '{out}' already exists; 'sctune run' refuses it unless "
            "output.overwrite=true (or --resume continues an interrupted run)"
        )
    if check_data:  # every check 'sctune run' makes before it trains
        import tempfile
        import warnings

        from sctune.core.runner import prepare_inputs

        caught: list[Any] = []
        try:
            with (
                tempfile.TemporaryDirectory(prefix="sctune-validate-") as tmp,
                warnings.catch_warnings(record=True) as caught,
            ):
                inputs = prepare_inputs(rec, registry, Path(tmp))
                _dry_build(rec, inputs)
        except BaseException:  # the warnings before the error still count
            for w in caught:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            raise
        report["info"] += inputs.info
        report["warnings"] += inputs.warnings + [_warning_text(w) for w in caught]
    return report


def _warning_text(record: Any) -> str:
    from sctune.core.errors import SctuneWarning

    text = str(record.message).strip()
    if issubclass(record.category, SctuneWarning):
        return text
    return f"{text} ({record.category.__name__})"


def _dry_build(rec: Any, inputs: Any) -> None:
    """Apply the adapters and the head to the backbone on the meta device (no weights, no
    memory), so mismatches that only show when the model is built are refused by validate too."""
    import torch

    from sctune.core.assembly import assemble
    from sctune.core.errors import SctuneError

    try:
        with torch.device("meta"):
            assemble(
                inputs.backbone,
                inputs.bcfg,
                inputs.adapters,
                inputs.task,
                rec.task.config,
                inputs.prepared,
                load_weights=False,
            )
    except SctuneError:
        raise
    except Exception:  # best effort: what the meta device cannot build is left to 'run'
        return


def run(
    recipe: PathLike | dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    registry: Any = None,
    progress: bool = True,
    log: Any = print,
    resume: bool = False,
) -> RunResult:
    """Train (or, for zero_shot, transfer) as the recipe says and write a run directory.

    The run is written into ``<output.dir>.partial`` and moved into place only when it succeeded;
    ``output.overwrite=true`` then replaces an earlier sctune run there (never another folder).
    Each epoch saves a checkpoint; after an interruption (Ctrl-C, SIGTERM, a crash) the
    ``.partial`` folder stays, and ``resume=True`` continues it to the result an uninterrupted
    run gives.
    """
    from sctune.core import rundir
    from sctune.core.runner import execute

    registry = registry or get_registry()
    rec = load(recipe, overrides, registry=registry)
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:  # DDP (accelerate launch): only rank 0 writes the run directory
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix=f"sctune-rank{rank}-"))
        try:
            return execute(rec, registry, scratch, progress=False, log=lambda m: None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    # absolute, so paths that backbones write into the run directory (resolve()) are stored
    # absolute in adapter.json and 'sctune predict' can rebase them when the run moves
    out = Path(rec.envelope.output.dir or Path("runs") / rec.name).resolve()
    command = f"sctune run {rec.source} {' '.join(overrides)}".strip()
    stage = rundir.begin(
        out, overwrite=rec.envelope.output.overwrite, resume=resume, command=command
    )
    try:
        result = execute(rec, registry, stage, progress=progress, log=log, resume=resume)
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, rundir.Interrupted))
        rundir.abandon(stage, interrupted=interrupted, resumed=resume)
        if interrupted and stage.is_dir():
            log(
                f"interrupted: the run so far is in '{stage}'; continue it with: {command} --resume"
            )
        raise
    rundir.commit(stage, out)
    result.run_dir = out
    result.files = {p.name: p for p in sorted(out.iterdir())}
    if result.context is not None:
        result.context.run_dir = out
    registry.pm.hook.sctune_after_run(run=result.context, result=result)  # the run is in place
    log(f"run directory: {out}")
    return result


def inspect(
    recipe: PathLike | dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    registry: Any = None,
    audit: bool = True,
) -> dict[str, Any]:
    """Build the model without training: parameter counts per module, adapters, gradient audit."""
    from sctune.core.runner import inspect_model

    registry = registry or get_registry()
    return inspect_model(load(recipe, overrides, registry=registry), registry, audit=audit)


def predict(
    run_dir: PathLike,
    query: PathLike,
    output: PathLike,
    *,
    registry: Any = None,
    checkpoint: PathLike | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Path:
    """Annotate ``query`` (.h5ad) with a trained run; refuse a different backbone or vocabulary.

    ``batch_size`` defaults to the run's ``trainer.eval_batch_size``; an existing ``output`` is
    replaced only with ``overwrite=True`` (and only once the new file is complete). The query is
    streamed from disk in chunks of ``chunk_size`` cells (default 20,000), so memory does not
    grow with its size; ``progress`` shows a bar on an interactive terminal.
    """
    from sctune.core.predictor import predict_h5ad

    registry = registry or get_registry()
    return predict_h5ad(
        Path(run_dir),
        str(query),
        Path(output),
        registry,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        batch_size=batch_size,
        overwrite=overwrite,
        chunk_size=chunk_size,
        progress=progress,
    )


def plugins(registry: Any = None) -> list[dict[str, Any]]:
    """One row per registered component: kind, name, distribution, version, licence, capabilities."""
    registry = registry or get_registry()
    rows = []
    for kind in ("backbone", "adapter", "task"):
        for name in registry.names(kind):
            e = registry.get(kind, name)
            caps = sorted(
                str(c)
                for c in getattr(e.cls, "provides" if kind == "backbone" else "requires", ())
            )
            rows.append(
                {
                    "kind": kind,
                    "name": name,
                    "plugin": e.plugin,
                    "distribution": e.distribution,
                    "version": e.version,
                    "licence": getattr(e.cls, "licence", ""),
                    "capabilities": caps if kind != "task" else [],
                    "description": getattr(e.cls, "description", ""),
                    "options": {
                        k: {
                            "default": _shown_default(f),
                            "description": f.description or "",
                        }
                        for k, f in e.cls.config_cls.model_fields.items()
                    },
                }
            )
    return rows


def _shown_default(field: Any) -> str:
    """An option's default as ``sctune plugins --options`` shows it (factories called)."""
    if field.is_required():
        return "(required)"
    try:
        value = field.get_default(call_default_factory=True)
    except TypeError:  # a factory that needs the other values
        return "(computed)"
    if value is None:
        return "null"
    return str(value) if isinstance(value, Path) else repr(value)


def bench(
    grid: PathLike | dict[str, Any],
    *,
    out: PathLike | None = None,
    jobs: int = 1,
    registry: Any = None,
    only: Sequence[str] = (),
    dry_run: bool = False,
    isolate: bool = True,
    progress: bool = True,
    log: Any = print,
    docs: PathLike | None = None,
) -> Any:
    """Run a benchmark grid (file, shipped name such as ``paper_small``, or mapping).

    Cells already finished are skipped, interrupted ones resumed; ``jobs`` cells run at once in
    child processes (one per GPU when several are visible). Returns a
    :class:`sctune.bench.runner.BenchResult` (``dry_run=True``: the expanded, validated
    :class:`sctune.bench.spec.Plan` without running anything). ``docs`` writes the markdown
    summary between the bench markers of that file.
    """
    from sctune.bench import runner

    registry = registry or get_registry()
    if dry_run:
        return runner.plan_bench(grid, registry)
    result = runner.run_bench(
        grid,
        out=out,
        jobs=jobs,
        registry=registry,
        isolate=isolate,
        only=only,
        progress=progress,
        log=log,
    )
    if docs is not None and "results.md" in result.files:
        from sctune.bench.markdown import update_docs

        update_docs(Path(docs), result.files["results.md"].read_text())
    return result


def recipes(registry: Any = None) -> dict[str, Path]:
    """Shipped recipes by short name."""
    registry = registry or get_registry()
    out: dict[str, Path] = {}
    for d in registry.recipe_dirs():
        for f in sorted(Path(d).rglob("*.yaml")):
            out.setdefault(f.relative_to(d).with_suffix("").as_posix(), f)
    return out


def env_info() -> dict[str, Any]:
    """What ``env.json`` records: versions, CUDA, platform, git revision."""
    from sctune.core.environment import environment

    return environment()
