"""Option helpers shared by the scPEFT adapters (no torch import: configs load at listing time).

- :data:`LayerSpec`: which encoder blocks an adapter acts on (``"all"``, ``"first_half"`` or a
  list of block indices), checked against the real block count by :func:`select_layers`.
- :func:`fill_preset`: fill the keys a recipe left out from a named preset (``v1`` = the code
  behind the scPEFT preprint's Table 3, ``v2`` = the ``scpeft`` 0.1.2 ``PeftConfig`` defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import field_validator, model_validator

from sctune.core.config import PluginConfig
from sctune.core.errors import RecipeError

LayerSpec = Literal["all", "first_half"] | list[int]
"""``"all"``, ``"first_half"`` (blocks ``0 .. n//2 - 1``) or explicit block indices."""

PresetName = Literal["v1", "v2"]

V2_LAYERS = [0, 1, 2, 3, 4, 5]
"""scPEFT v2 (and repro) put the encoder adapter, prefix prompts and LoRA on blocks 0-5."""


def check_layer_list(value: LayerSpec) -> LayerSpec:
    """Field validator body: an explicit list must be non-empty, unique and non-negative."""
    if isinstance(value, list):
        if not value:
            raise ValueError("layer list is empty; give at least one block index, or 'all'")
        if len(set(value)) != len(value):
            raise ValueError(f"layer list has duplicates: {value}")
        if min(value) < 0:
            raise ValueError(f"layer indices must be >= 0, got {value}")
        return sorted(value)
    return value


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


def select_layers(spec: LayerSpec, n_blocks: int, *, adapter: str) -> list[int]:
    """Resolve ``spec`` against a backbone with ``n_blocks`` blocks.

    Raises
    ------
    RecipeError
        When an index does not exist on this backbone or the selection is empty.
    """
    if spec == "all":
        layers = list(range(n_blocks))
    elif spec == "first_half":
        layers = list(range(n_blocks // 2))
    else:
        bad = [i for i in spec if i >= n_blocks]
        if bad:
            raise RecipeError(
                f"adapter.layers: {adapter} was asked for block(s) {bad}, but this backbone has "
                f"{n_blocks} block(s) (indices 0..{n_blocks - 1})",
                hint="use indices below the block count, or 'all' / 'first_half'",
            )
        layers = list(spec)
    if not layers:
        raise RecipeError(
            f"adapter.layers: '{spec}' selects no block on a backbone with {n_blocks} block(s)",
            hint="use 'all' or an explicit list of block indices",
        )
    return layers


class AdapterOptions(PluginConfig):
    """Base of the scPEFT adapters' options: fills :attr:`presets` and checks a ``layers`` list."""

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return fill_preset(data, cls.presets)

    @field_validator("layers", check_fields=False)
    @classmethod
    def _layers(cls, value: LayerSpec) -> LayerSpec:
        return check_layer_list(value)
