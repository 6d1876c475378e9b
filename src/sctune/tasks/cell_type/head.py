"""scGPT's classifier head (ClsDecoder): [Linear-ReLU-LayerNorm] x (layers-1), then Linear."""

from __future__ import annotations

import torch
from torch import nn


class ClsDecoder(nn.Module):
    """Parameters: (layers-1) * (d*d + d + 2d) + d*n + n; for d=512, 3 layers: 527,360 + 513 n."""

    def __init__(
        self, d_model: int, n_classes: int, n_layers: int = 3, input_norm: str = "none"
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.BatchNorm1d(d_model)] if input_norm == "batch" else []
        for _ in range(n_layers - 1):
            blocks += [nn.Linear(d_model, d_model), nn.ReLU(), nn.LayerNorm(d_model)]
        self._decoder = nn.Sequential(*blocks)
        self.out_layer = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self._decoder(x))
