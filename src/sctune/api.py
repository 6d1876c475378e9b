"""The Python API. The CLI is a thin layer over these functions.

>>> from sctune import api
>>> result = api.run("quickstart", overrides=["trainer.epochs=2"])   # doctest: +SKIP
>>> result.metrics["test"]["accuracy"]                                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sctune.core.errors import SctuneError

PathLike = str | Path


@dataclass
class RunResult:
    """What :func:`run` returns: the run directory, final metrics and artifact paths."""

    run_dir: Path
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


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
    if isinstance(recipe, dict):
        return validate_recipe(apply_overrides(recipe, overrides), registry, source="<dict>")
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
    rec = load(recipe, overrides, registry=registry)
    report: dict[str, Any] = {"recipe": rec.source, "warnings": [], "info": []}
    if check_data:  # every check 'sctune run' makes before it builds the model
        import tempfile

        from sctune.core.runner import prepare_inputs

        with tempfile.TemporaryDirectory(prefix="sctune-validate-") as tmp:
            inputs = prepare_inputs(rec, registry, Path(tmp))
        report["info"] += inputs.info
        report["warnings"] += inputs.warnings
    return report


def run(
    recipe: PathLike | dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    registry: Any = None,
    progress: bool = True,
    log: Any = print,
) -> RunResult:
    """Train (or, for zero_shot, transfer) as the recipe says and write a run directory."""
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
    if out.exists() and any(out.iterdir()):
        if not rec.envelope.output.overwrite:
            raise SctuneError(
                f"output.dir: run directory '{out}' already exists and is not empty",
                hint="pass output.overwrite=true, or choose another output.dir=...",
            )
    backup = None
    if out.exists():
        backup = out.with_name(out.name + ".previous")
        shutil.rmtree(backup, ignore_errors=True)
        out.rename(backup)
    out.mkdir(parents=True)
    try:
        result = execute(rec, registry, out, progress=progress, log=log)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # nothing half-written
        if backup is not None:
            backup.rename(out)  # no data lost
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
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
    batch_size: int = 64,
) -> Path:
    """Annotate ``query`` (.h5ad) with a trained run; refuse a different backbone or vocabulary."""
    from sctune.core.predictor import predict_h5ad

    registry = registry or get_registry()
    return predict_h5ad(
        Path(run_dir),
        str(query),
        Path(output),
        registry,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        batch_size=batch_size,
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
                            "default": repr(f.default) if f.default is not None else "null",
                            "description": f.description or "",
                        }
                        for k, f in e.cls.config_cls.model_fields.items()
                    },
                }
            )
    return rows


def recipes(registry: Any = None) -> dict[str, Path]:
    """Shipped recipes by short name."""
    registry = registry or get_registry()
    out: dict[str, Path] = {}
    for d in registry.recipe_dirs():
        for f in sorted(Path(d).rglob("*.yaml")):
            out.setdefault(f.relative_to(d).with_suffix("").as_posix(), f)
    return out


def env_info() -> dict[str, Any]:
    import torch

    from sctune import __version__

    try:
        sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
    except Exception:
        sha = None
    return {
        "sctune": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "git_sha": sha,
        "platform": platform.platform(),
    }
