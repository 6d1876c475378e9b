"""``LoRALinear``: a frozen ``nn.Linear`` plus low-rank updates on chosen output-row slices.

One wrapper per linear, even when several targets share it (scGPT's packed ``Wqkv``: Q rows
0..d-1 and V rows 2d..3d-1 each get their own ``A``/``B``; K rows stay untouched). The wrapper
takes over the base layer's own ``weight``/``bias`` Parameters, so backbone state-dict keys are
unchanged (``...Wqkv.weight``) and attribute readers still work; LoRA tensors are registered as
``lora_A_<target>`` / ``lora_B_<target>``.

The update ``(alpha / r) B A dropout(x)`` is added exactly once, in train and eval mode alike,
unless it has been folded into ``weight`` by :meth:`LoRALinear.merge` (then it is skipped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """A linear layer ``y = W x + b`` with ``y[rows_t] += s B_t A_t x`` for each target ``t``.

    Parameters
    ----------
    base
        The ``nn.Linear`` to wrap; its ``weight`` and ``bias`` Parameters are reused, not copied.
    slices
        ``{target: rows}``: the output rows each update writes (``None`` = all rows). Slices must
        be contiguous (step 1) and must not overlap.
    rank, alpha, dropout
        ``A_t`` is ``(rank, in)`` with Kaiming-uniform init (a = sqrt(5)), ``B_t`` is
        ``(rows, rank)`` with zeros; the scale is ``alpha / rank``.
    """

    def __init__(
        self,
        base: nn.Linear,
        slices: Mapping[str, slice | None],
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.rows: dict[str, tuple[int, int]] = {}
        for target, rows in slices.items():
            start, stop, step = (rows or slice(None)).indices(self.out_features)
            if step != 1 or stop <= start:
                raise ValueError(f"target '{target}': rows {rows} are not a contiguous slice")
            self.rows[target] = (start, stop)
        spans = sorted(self.rows.values())
        for (_, stop), (start, _) in zip(spans, spans[1:], strict=False):
            if start < stop:
                raise ValueError(f"LoRA row slices overlap: {self.rows}")
        w = base.weight
        for target, (start, stop) in self.rows.items():
            a = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            b = nn.Parameter(torch.zeros(stop - start, rank, device=w.device, dtype=w.dtype))
            self.register_parameter(f"lora_A_{target}", a)
            self.register_parameter(f"lora_B_{target}", b)

    def lora_parameters(self) -> list[nn.Parameter]:
        """``[A_t, B_t, ...]`` in target order."""
        out = []
        for target in self.rows:
            out += [getattr(self, f"lora_A_{target}"), getattr(self, f"lora_B_{target}")]
        return out

    def delta(self, target: str) -> torch.Tensor:
        """The weight update ``s B_t A_t`` of one target, shape ``(rows, in)``."""
        a, b = getattr(self, f"lora_A_{target}"), getattr(self, f"lora_B_{target}")
        return (b @ a) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        h = self.dropout(x)
        pieces, at = [], 0
        for target, (start, stop) in sorted(self.rows.items(), key=lambda kv: kv[1]):
            a, b = getattr(self, f"lora_A_{target}"), getattr(self, f"lora_B_{target}")
            if start > at:
                pieces.append(y[..., at:start])
            update = F.linear(F.linear(h, a.to(h.dtype)), b.to(h.dtype)) * self.scale
            pieces.append(y[..., start:stop] + update.to(y.dtype))
            at = stop
        if at < self.out_features:
            pieces.append(y[..., at:])
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every update into ``weight`` (idempotent); the forward then skips them."""
        if self.merged:
            return
        for target, (start, stop) in self.rows.items():
            self.weight[start:stop] += self.delta(target).to(self.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the updates back out of ``weight`` (idempotent)."""
        if not self.merged:
            return
        for target, (start, stop) in self.rows.items():
            self.weight[start:stop] -= self.delta(target).to(self.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        rows = ", ".join(f"{t}={a}:{b}" for t, (a, b) in self.rows.items())
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, scale={self.scale:g}, rows=[{rows}], merged={self.merged}"
        )
