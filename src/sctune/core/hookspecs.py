"""The hook specifications: sctune's plugin API.

Every hook has the ``sctune_`` prefix, takes keyword arguments and says when it fires. Built-in
plugins (listed in ``plugins.yaml``) use exactly these hooks; third-party packages add an entry
point in the ``sctune`` group::

    [project.entry-points.sctune]
    uce = "sctune_uce.plugin"

Registration hooks return lists; sctune flattens them and refuses duplicate names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from sctune.core.adapter import Adapter
    from sctune.core.backbone import Backbone
    from sctune.core.task import Task

hookspec = pluggy.HookspecMarker("sctune")
hookimpl = pluggy.HookimplMarker("sctune")


@hookspec
def sctune_register_backbones() -> list[type[Backbone]]:
    """Return backbone classes (subclasses of :class:`sctune.core.backbone.Backbone`).

    When: once, when the registry is built (``sctune plugins``, ``validate``, ``run``...).

    Example::

        @hookimpl
        def sctune_register_backbones():
            return [MyBackbone]
    """


@hookspec
def sctune_register_adapters() -> list[type[Adapter]]:
    """Return adapter classes (subclasses of :class:`sctune.core.adapter.Adapter`).

    When: once, when the registry is built. An adapter acts on any backbone whose declared
    capabilities cover its ``requires`` set.

    Example::

        @hookimpl
        def sctune_register_adapters():
            return [MyAdapter]
    """


@hookspec
def sctune_register_tasks() -> list[type[Task]]:
    """Return task classes (subclasses of :class:`sctune.core.task.Task`).

    When: once, when the registry is built.

    Example::

        @hookimpl
        def sctune_register_tasks():
            return [CellTypeTask]
    """


@hookspec
def sctune_add_commands(app: Any) -> None:
    """Attach subcommands to the root ``typer.Typer`` app.

    When: once, when the CLI starts, before arguments are parsed.

    Example::

        @hookimpl
        def sctune_add_commands(app):
            @app.command()
            def hello():
                print("hi")
    """


@hookspec
def sctune_recipe_dirs() -> list[Path]:
    """Return folders of shipped recipes (``*.yaml``), addressable by file stem.

    When: whenever a recipe name that is not a file path is resolved (``sctune run quickstart``).

    Example::

        @hookimpl
        def sctune_recipe_dirs():
            return [Path(__file__).parent / "recipes"]
    """


@hookspec
def sctune_before_run(run: Any) -> None:
    """Called after validation and model build, before the first training step.

    When: once per run. ``run`` is the :class:`sctune.core.trainer.RunContext` (recipe, run
    directory, model). Use it to start trackers.

    Example::

        @hookimpl
        def sctune_before_run(run):
            print("starting", run.recipe.name)
    """


@hookspec
def sctune_after_epoch(run: Any, epoch: int, metrics: dict[str, float]) -> None:
    """Called at the end of every training epoch with that epoch's metrics.

    When: after validation of ``epoch`` (counted from 1, as the console, ``train_log.jsonl``
    and ``metrics.json`` count) and after that epoch's checkpoint is saved. ``metrics`` maps
    names such as ``train/loss`` and ``valid/loss`` to floats.

    Example::

        @hookimpl
        def sctune_after_epoch(run, epoch, metrics):
            tracker.log(metrics, step=epoch)
    """


@hookspec
def sctune_after_run(run: Any, result: Any) -> None:
    """Called once the run directory is complete.

    When: at the end of a successful run. ``result`` is the :class:`sctune.api.RunResult`
    (final metrics and artifact paths).

    Example::

        @hookimpl
        def sctune_after_run(run, result):
            upload(result.run_dir)
    """
