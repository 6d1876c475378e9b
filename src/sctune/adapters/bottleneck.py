"""The bottleneck adapter shared by the gene token and gene encoder prompts (methods.md 3).

``Adapter(x) = W_up GELU(W_down x + b_down) + b_up`` with ``W_down: d -> k``, ``W_up: k -> d`` and
``k = int(d * ratio)``. Default PyTorch ``nn.Linear`` initialisation (scPEFT's choice: the adapted
model is *not* the backbone at step 0); ``zero_init`` zeroes ``W_up`` and ``b_up`` so it is.
No dropout, no LayerNorm. Parameters: ``2 d k + k + d``.
"""

from __future__ import annotations

import torch
from torch import nn


def bottleneck_width(hidden: int, ratio: float) -> int:
    """``k = int(hidden * ratio)``, as scPEFT computes it."""
    return int(hidden * ratio)


class Bottleneck(nn.Module):
    """``x + s * Adapter(x)`` when ``residual``, else ``s * Adapter(x)``.

    Parameters
    ----------
    hidden
        Width ``d`` of the stream the adapter reads and writes.
    ratio
        Bottleneck ratio; the inner width is ``int(hidden * ratio)`` (must be >= 1).
    residual
        Add the input back (the "space" adapter) or return the branch alone (the "MLP" adapter,
        summed onto a block output by the backbone's parallel slot).
    scale
        Constant factor ``s`` on the adapter branch (scPEFT's MLP adapter: 0.5); not learned.
    zero_init
        Zero ``up.weight`` and ``up.bias`` so the branch starts at exactly 0.
    """

    def __init__(
        self,
        hidden: int,
        ratio: float,
        *,
        residual: bool,
        scale: float = 1.0,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        width = bottleneck_width(hidden, ratio)
        if width < 1:
            raise ValueError(
                f"bottleneck width int({hidden} * {ratio}) = {width}; raise 'mlp_ratio' so that "
                f"the adapter has at least one hidden unit"
            )
        self.residual = residual
        self.scale = float(scale)
        self.down = nn.Linear(hidden, width)
        self.act = nn.GELU()
        self.up = nn.Linear(width, hidden)
        if zero_init:
            with torch.no_grad():
                self.up.weight.zero_()
                self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.act(self.down(x)))
        if self.scale != 1.0:
            y = y * self.scale
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"residual={self.residual}, scale={self.scale}"
