"""Shipped recipes, registered through the public ``sctune_recipe_dirs`` hook."""

from __future__ import annotations

from pathlib import Path

from sctune import hookimpl


@hookimpl
def sctune_recipe_dirs() -> list[Path]:
    return [Path(__file__).parent]
