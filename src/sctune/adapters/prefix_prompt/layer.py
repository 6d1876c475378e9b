"""Tensors of the prefix prompt."""

from __future__ import annotations

import torch
from torch import nn

NORMAL_STD = 0.02


def prompt_tokens(
    num_tokens: int, hidden: int, *, init: str, device: torch.device, dtype: torch.dtype
) -> nn.Parameter:
    """A ``(num_tokens, hidden)`` prompt parameter, zero or N(0, 0.02^2) initialised."""
    data = torch.zeros(num_tokens, hidden, device=device, dtype=dtype)
    if init == "normal":
        nn.init.normal_(data, std=NORMAL_STD)
    elif init != "zeros":
        raise ValueError(f"unknown prompt init '{init}'; use 'zeros' or 'normal'")
    return nn.Parameter(data)
