"""Options of the prefix prompt."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sctune.adapters._options import V2_LAYERS, AdapterOptions, PresetName
from sctune.core.adapter import LayerSpec

PRESETS: dict[str, dict[str, Any]] = {
    "v1": {},  # field defaults = scPEFT v1/repro: 64 tokens on every block, zero init
    "v2": {"num_tokens": 8, "layers": V2_LAYERS},  # scpeft 0.1.2 PeftConfig (PREFIX)
}


class PrefixPromptConfig(AdapterOptions):
    """Deep prompt tokens per block (scPEFT v1/repro defaults: 64 tokens, all blocks, zeros)."""

    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: PresetName = Field(
        "v1",
        description="defaults to start from: 'v1' (scPEFT preprint/repro code: 64 tokens on every "
        "block) or 'v2' (scpeft 0.1.2 PeftConfig: 8 tokens on blocks 0-5); keys given explicitly "
        "override the preset",
    )
    num_tokens: int = Field(
        64,
        gt=0,
        description="prompt tokens T per prompted block (inserted after any leading <cls>, "
        "stripped before pooling)",
    )
    layers: LayerSpec = Field(
        "all",
        description="blocks that get their own prompts: 'all', 'first_half' or a list of block "
        "indices; later unprompted blocks carry the previous prompt outputs along",
    )
    init: Literal["zeros", "normal"] = Field(
        "zeros",
        description="prompt initialisation: 'zeros' (scPEFT; not an identity, since zero tokens "
        "still receive attention) or 'normal' (std 0.02)",
    )
