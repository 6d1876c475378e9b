"""Options of the gene encoder prompt."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from sctune.adapters._options import V2_LAYERS, AdapterOptions, PresetName
from sctune.core.adapter import LayerSpec

PRESETS: dict[str, dict[str, Any]] = {
    "v1": {},  # field defaults = scPEFT v1 (preprint Table 3): Space + MLP, blocks 0-5
    "v2": {"mlp_adapter": False, "layers": V2_LAYERS},  # scpeft 0.1.2 ENCODER: Space only
}


class GeneEncoderPromptConfig(AdapterOptions):
    """Per-block bottleneck adapters (scPEFT v1 defaults: Space + MLP on the first half)."""

    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: PresetName = Field(
        "v1",
        description="defaults to start from: 'v1' (scPEFT preprint code: Space + MLP adapters, "
        "first half of the blocks) or 'v2' (scpeft 0.1.2 ENCODER: Space adapter only, blocks "
        "0-5); keys given explicitly override the preset",
    )
    layers: LayerSpec = Field(
        "first_half",
        description="blocks to adapt: 'all', 'first_half' (0..n/2-1; blocks 0-5 on scGPT) or a "
        "list of block indices",
    )
    mlp_ratio: float = Field(
        0.25,
        gt=0,
        description="bottleneck width as a fraction of the hidden size: k = int(hidden * ratio)",
    )
    mlp_adapter: bool = Field(
        True,
        description="also add the parallel 'MLP' adapter beside the feed-forward sub-block, "
        "scaled by 'scale' and added to the block output (scPEFT v1); false = Space adapter only "
        "(scPEFT v2 ENCODER)",
    )
    scale: float = Field(
        0.5,
        description="constant factor s on the MLP adapter's output (not learned)",
    )
    zero_init: bool = Field(
        False,
        description="zero every adapter's up-projection so the adapted model starts exactly at "
        "the backbone (scPEFT uses the default Linear init)",
    )
