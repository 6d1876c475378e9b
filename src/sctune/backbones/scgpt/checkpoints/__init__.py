"""Checkpoints shipped inside sctune, named ``builtin:<name>`` in ``backbone.checkpoint``.

Each is a folder in scGPT's real format (args.json, vocab.json, best_model.pt) plus
``backbone.yaml`` (the options that load it), ``pretraining_cells.json`` (which cells trained it)
and a NOTICE (how it was made, from which data, under which licence). They are sctune's own small
self-pretrained models, not scGPT's published weights. The mechanism is
:mod:`sctune.core.shipped`, shared by the built-in backbones.
"""

from __future__ import annotations

from pathlib import Path

from sctune.core.shipped import PREFIX, Shipped

HERE = Path(__file__).resolve().parent
BUILTIN: dict[str, str] = {
    # 0.65 M encoder parameters (128 dims x 4 layers), log1p values, mean pooling; 6,512 PBMCs
    # (pbmc3k + Zheng sorted) over the 765 genes of scanpy's pbmc68k_reduced (the quickstart's).
    "pbmc_small": "pbmc_small",
}
SHIPPED = Shipped(
    HERE,
    BUILTIN,
    path_keys=("checkpoint",),
    fmt="a scGPT folder with args.json, vocab.json, best_model.pt",
    fixed=("value_style",),
)

__all__ = ["BUILTIN", "HERE", "PREFIX", "SHIPPED", "name_of", "resolve"]


def resolve(value: object) -> object:
    """``builtin:<name>`` -> the packaged folder; anything else unchanged. An unknown name
    raises ``ValueError`` naming the known ones."""
    return SHIPPED.resolve(value)


def name_of(path: object) -> str | None:
    """``builtin:<name>`` when ``path`` is a shipped checkpoint's folder, else ``None``."""
    named = SHIPPED.name_of(path)
    return named if named is not None and "/" not in named else None
