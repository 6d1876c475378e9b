"""Options of the gene token prompt."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from sctune.adapters._options import AdapterOptions, PresetName

PRESETS: dict[str, dict[str, Any]] = {
    "v1": {},  # field defaults = scPEFT v1 (preprint Table 3)
    "v2": {"mlp_ratio": 1.0},  # scpeft 0.1.2 PeftConfig (TOKEN)
}


class GeneTokenPromptConfig(AdapterOptions):
    """Residual bottleneck adapter on the backbone's input embedding (scPEFT v1 defaults)."""

    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: PresetName = Field(
        "v1",
        description="defaults to start from: 'v1' (scPEFT preprint code, ratio 0.25) or 'v2' "
        "(scpeft 0.1.2 PeftConfig, ratio 1.0); keys given explicitly override the preset",
    )
    mlp_ratio: float = Field(
        0.25,
        gt=0,
        description="bottleneck width as a fraction of the hidden size: k = int(hidden * ratio) "
        "(0.25 on scGPT: 512 -> 128 -> 512, 131,712 parameters)",
    )
    zero_init: bool = Field(
        False,
        description="zero the up-projection so the adapted model starts exactly at the backbone "
        "(scPEFT uses the default Linear init, so the model differs at step 0)",
    )
