"""Modules of the gene token prompt: the shared residual bottleneck."""

from __future__ import annotations

from sctune.adapters.bottleneck import Bottleneck


def token_adapter(hidden: int, ratio: float, *, zero_init: bool) -> Bottleneck:
    """``x + W_up GELU(W_down x + b_down) + b_up``, k = int(hidden * ratio)."""
    return Bottleneck(hidden, ratio, residual=True, zero_init=zero_init)
