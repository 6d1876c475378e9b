"""Attention for backbones: the fused SDPA kernels where they apply, a lean CPU path where not.

``torch.nn.functional.scaled_dot_product_attention`` has no fused CPU kernel for dropout on the
attention probabilities (scGPT's pretraining and fine-tuning setting, 0.2), so it falls back to
its math path: about ten passes over every ``(batch, heads, L, L)`` tensor, a Bernoulli draw
per probability, the mask and the probabilities kept for the backward. :func:`attention` keeps
SDPA for everything it fuses (no dropout, evaluation, CUDA) and, for CPU training with dropout,
runs :class:`_DropoutAttention`: one ``baddbmm`` with the padding bias, an in-place softmax, a
keep-mask drawn 3 at a time from 64-bit random words (16-bit thresholds: ``p`` is used to
1/65,536), and a hand-written backward that keeps only the probabilities and the 1-byte mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def keep_mask(shape: tuple[int, ...], p: float, device: Any = None) -> torch.Tensor:
    """Bernoulli(1 - p) as ``bool``, from 16-bit slices of 64-bit random words (torch's RNG).

    ``random_()`` fills int64 with uniform values in ``[0, 2**63)``: the three low 16-bit slices
    of each word are uniform over all 65,536 values (the top one is not, and is skipped).
    """
    n = math.prod(shape)
    words = torch.empty((n + 2) // 3, dtype=torch.int64, device=device).random_()
    halves = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[:n]
    return (halves >= round(p * 65536) - 32768).view(shape)


class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, p: float
    ) -> torch.Tensor:
        b, h, n, d = q.shape
        scale = 1.0 / math.sqrt(d)
        qf, kf, vf = (t.reshape(b * h, n, d) for t in (q, k, v))
        s = torch.baddbmm(
            bias.expand(b, h, 1, n).reshape(b * h, 1, n).expand(b * h, n, n),
            qf,
            kf.transpose(1, 2),
            alpha=scale,
        )
        probs = torch.softmax(s, dim=-1)
        del s
        keep = keep_mask(tuple(probs.shape), p, probs.device)
        dropped = probs.masked_fill(~keep, 0.0).mul_(1.0 / (1.0 - p))
        out = torch.bmm(dropped, vf)
        ctx.save_for_backward(qf, kf, vf, probs, keep)
        ctx.scale, ctx.p, ctx.shape = scale, p, (b, h, n, d)
        return out.view(b, h, n, d)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        qf, kf, vf, probs, keep = ctx.saved_tensors
        b, h, n, d = ctx.shape
        g = grad.reshape(b * h, n, d)
        inv = 1.0 / (1.0 - ctx.p)
        dropped = probs.masked_fill(~keep, 0.0).mul_(inv)
        dv = torch.bmm(dropped.transpose(1, 2), g)
        del dropped
        dp = torch.bmm(g, vf.transpose(1, 2)).masked_fill_(~keep, 0.0).mul_(inv)
        # softmax backward: ds = P * (dP - sum(dP * P))
        row = (dp * probs).sum(-1, keepdim=True)
        ds = dp.sub_(row).mul_(probs)
        dq = torch.bmm(ds, kf).mul_(ctx.scale)
        dk = torch.bmm(ds.transpose(1, 2), qf).mul_(ctx.scale)
        shape = (b, h, n, d)
        return dq.view(shape), dk.view(shape), dv.view(shape), None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention of ``(batch, heads, L, d)`` tensors; ``padding_mask`` ``(batch, L)``,
    ``True`` = padding (never attended to). ``dropout_p`` applies to the probabilities (pass 0
    outside training)."""
    if dropout_p > 0.0 and q.device.type == "cpu" and q.dtype == torch.float32:
        if padding_mask is None:
            bias = q.new_zeros(q.shape[0], 1, 1, q.shape[2])
        else:
            bias = q.new_zeros(padding_mask.shape).masked_fill_(padding_mask, float("-inf"))
            bias = bias[:, None, None, :]
        return _DropoutAttention.apply(q, k, v, bias, dropout_p)
    keep = None if padding_mask is None else ~padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
