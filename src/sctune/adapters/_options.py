"""Option helpers shared by the scPEFT adapters (no torch import: configs load at listing time).

- :func:`fill_preset`: fill the keys a recipe left out from a named preset (``v1`` = the code
  behind the scPEFT preprint's Table 3, ``v2`` = the ``scpeft`` 0.1.2 ``PeftConfig`` defaults).
- :class:`AdapterOptions`: the base of the scPEFT adapters' options (fills its presets).

The ``layers`` option type and its resolution against the real block count are public, for any
adapter: :data:`sctune.core.adapter.LayerSpec` and :func:`sctune.core.adapter.select_layers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from sctune.core.config import PluginConfig

PresetName = Literal["v1", "v2"]

V2_LAYERS = [0, 1, 2, 3, 4, 5]
"""scPEFT v2 (and repro) put the encoder adapter, prefix prompts and LoRA on blocks 0-5."""


def fill_preset(data: Any, presets: Mapping[str, Mapping[str, Any]]) -> Any:
    """``model_validator(mode="before")`` body: preset values under the keys a recipe gave.

    Explicit keys always win. An unknown preset name is left for field validation to report.
    """
    if not isinstance(data, Mapping):
        return data
    values = presets.get(str(data.get("preset", "v1")))
    if values is None:
        return data
    return {**values, **data}


class AdapterOptions(PluginConfig):
    """Base of the scPEFT adapters' options: fills :attr:`presets` before validation."""

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return fill_preset(data, cls.presets)
