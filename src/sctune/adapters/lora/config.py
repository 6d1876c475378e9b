"""Options of LoRA."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from sctune.adapters._options import V2_LAYERS, AdapterOptions, PresetName
from sctune.core.adapter import LayerSpec

Target = Literal["q", "k", "v", "o", "ffn_in", "ffn_out"]

PRESETS: dict[str, dict[str, Any]] = {
    "v1": {},  # field defaults = scPEFT v1 (preprint Table 3): r 8, alpha 1, Q+V, every block
    "v2": {"layers": V2_LAYERS},  # scpeft 0.1.2 / repro: blocks 0-5
}


class LoRAConfig(AdapterOptions):
    """Low-rank updates on chosen projections (scPEFT v1 defaults: r 8, alpha 1, Q and V)."""

    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: PresetName = Field(
        "v1",
        description="defaults to start from: 'v1' (scPEFT preprint code: every block) or 'v2' "
        "(scpeft 0.1.2 / repro: blocks 0-5); keys given explicitly override the preset",
    )
    rank: int = Field(8, gt=0, description="rank r of each update B A")
    alpha: float = Field(
        1.0,
        gt=0,
        description="scaling numerator: the update is (alpha / rank) B A x (0.125 in scPEFT)",
    )
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on the LoRA branch input (the base path is unaffected)",
    )
    targets: list[Target] = Field(
        default_factory=lambda: ["q", "v"],
        description="projections to adapt: q, k, v (slices of a packed QKV projection where the "
        "backbone has one), o, ffn_in, ffn_out",
    )
    layers: LayerSpec = Field(
        "all", description="blocks to adapt: 'all', 'first_half' or a list of block indices"
    )
    train_bias: bool = Field(
        True,
        description="also train the bias of every wrapped linear (the whole packed QKV bias on "
        "scGPT), like loralib's bias='lora_only' in scPEFT",
    )
    merge: bool = Field(
        False,
        description="fold the updates into the frozen weights before prediction and export "
        "(same outputs, no low-rank matmuls); training always runs unmerged",
    )

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("targets is empty; give at least one of q, k, v, o, ffn_in, ffn_out")
        if len(set(value)) != len(value):
            raise ValueError(f"targets has duplicates: {value}")
        return value
