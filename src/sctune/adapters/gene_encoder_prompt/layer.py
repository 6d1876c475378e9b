"""Modules of the gene encoder prompt: the "Space" and "MLP" bottlenecks."""

from __future__ import annotations

from sctune.adapters.bottleneck import Bottleneck


def space_adapter(hidden: int, ratio: float, *, zero_init: bool) -> Bottleneck:
    """Sequential, residual adapter on the stream after the attention sub-block."""
    return Bottleneck(hidden, ratio, residual=True, zero_init=zero_init)


def mlp_adapter(hidden: int, ratio: float, *, scale: float, zero_init: bool) -> Bottleneck:
    """Parallel branch ``s * Adapter(x)`` fed with the FFN input, summed onto the block output."""
    return Bottleneck(hidden, ratio, residual=False, scale=scale, zero_init=zero_init)
