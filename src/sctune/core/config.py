"""Base class for every plugin's options model (the flat keys next to ``name`` in a recipe)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PluginConfig(BaseModel):
    """Options of one plugin. Unknown keys are errors; instances are immutable.

    Subclass it in the plugin's ``config.py`` and point the component's ``config_cls`` at it.
    Document every field with ``Field(description=...)``: ``sctune plugins --options`` prints them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
