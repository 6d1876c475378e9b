"""A non-causal Performer (FAVOR+ linear attention) with scBERT's module names.

Written from the Performer paper (Choromanski et al., 2021) and the key layout in
``docs/backbones.md`` section 3.2; the module and attribute names are interface facts that make
scBERT checkpoints load without renaming. Every sub-block has an insertion slot from
:mod:`sctune.core.surfaces`; empty slots are the identity.

Per head, with ``d`` the head width and ``W`` the ``(m, d)`` random projection::

    x~   = d^(-1/4) x
    phi(x) = m^(-1/2) (exp(W x~ - |x~|^2 / 2 - c) + 1e-4)
    Attn = D^-1 phi(Q) (phi(K)^T V),   D = diag(phi(Q) phi(K)^T 1)

``c`` is a numerical stabiliser: the row maximum of ``W x~`` for queries and, for keys, the
maximum over all unpadded keys and features of one (cell, head), so a cell's output never
depends on the other cells in its batch. It cancels exactly except through the ``1e-4`` term.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sctune.core.surfaces import ParallelSlot, PromptSlot, TransformSlot

KERNEL_EPS = 1e-4


def default_nb_features(dim_head: int) -> int:
    """The number of random features FAVOR+ uses by default: ``int(d ln d)``."""
    return int(dim_head * math.log(dim_head))


def orthogonal_gaussian_features(
    rows: int, cols: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random feature matrix ``(rows, cols)`` whose rows are orthogonal in blocks of ``cols``.

    Each block is the ``Q`` factor of a square Gaussian matrix; every row is then rescaled to the
    norm of an independent Gaussian vector, so row norms follow a chi distribution as for i.i.d.
    Gaussian rows (the "orthogonal random features" of the Performer paper).
    """
    blocks = []
    remaining = rows
    while remaining > 0:
        gauss = torch.randn(cols, cols, generator=generator)
        q, _ = torch.linalg.qr(gauss)
        blocks.append(q.T[: min(cols, remaining)])
        remaining -= cols
    directions = torch.cat(blocks)
    norms = torch.randn(rows, cols, generator=generator).norm(dim=1, keepdim=True)
    return directions * norms


def favor_features(
    x: torch.Tensor,
    projection: torch.Tensor,
    *,
    is_query: bool,
    key_padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positive random features ``phi(x)`` of ``x`` ``(batch, heads, length, dim_head)``.

    For keys, padded positions (``key_padding`` True) get zero features and do not enter the
    stabiliser, so they have no effect at all on the other positions.
    """
    scale = x.shape[-1] ** -0.25
    x = x * scale
    proj = torch.einsum("bhnd,md->bhnm", x, projection.to(x.dtype))
    half_sq_norm = (x**2).sum(dim=-1, keepdim=True) / 2
    if is_query:
        stab = proj.amax(dim=-1, keepdim=True).detach()
    elif key_padding is None:
        stab = proj.amax(dim=(-1, -2), keepdim=True).detach()
    else:
        pad = key_padding[:, None, :, None]
        stab = proj.masked_fill(pad, float("-inf")).amax(dim=(-1, -2), keepdim=True).detach()
        stab = torch.nan_to_num(stab, neginf=0.0)
    ratio = projection.shape[0] ** -0.5
    feats = ratio * (torch.exp(proj - half_sq_norm - stab) + KERNEL_EPS)
    if key_padding is not None:
        feats = feats.masked_fill(key_padding[:, None, :, None], 0.0)
    return feats


class FastAttention(nn.Module):
    """FAVOR+ kernel with a fixed projection buffer ``projection_matrix (m, dim_head)``."""

    def __init__(self, dim_head: int, nb_features: int) -> None:
        super().__init__()
        self.register_buffer(
            "projection_matrix", orthogonal_gaussian_features(nb_features, dim_head)
        )

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding: torch.Tensor | None
    ) -> torch.Tensor:
        q_feat = favor_features(q, self.projection_matrix, is_query=True)
        if key_padding is not None and not bool(key_padding.any()):
            key_padding = None
        k_feat = favor_features(k, self.projection_matrix, is_query=False, key_padding=key_padding)
        context = torch.einsum("bhnm,bhne->bhme", k_feat, v)
        denom = torch.einsum("bhnm,bhm->bhn", q_feat, k_feat.sum(dim=-2))
        return torch.einsum("bhnm,bhme->bhne", q_feat, context) / denom.unsqueeze(-1)


class SelfAttention(nn.Module):
    """Multi-head FAVOR+ self-attention: ``to_q/to_k/to_v`` (no bias), ``to_out`` (bias).

    The projections are always *called*, so a wrapper set in their place (LoRA) runs.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, nb_features: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.fast_attention = FastAttention(dim_head, nb_features)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = (self._split(f(x)) for f in (self.to_q, self.to_k, self.to_v))
        out = self.fast_attention(q, k, v, key_padding)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """``w2(GELU(w1 x))`` with ``w1: dim -> dim*mult``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, dim * mult)
        self.act = nn.GELU()
        self.w2 = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(x)))


class Passthrough(nn.Module):
    """Holds ``fn`` one level down, so keys read ``...1.fn.fn.w1`` as in scBERT's files."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class AttentionSublayer(nn.Module):
    """``x + output_slot(Attn(LN x))``; ``prompt`` is this layer's prompt slot."""

    def __init__(self, dim: int, heads: int, dim_head: int, nb_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = SelfAttention(dim, heads, dim_head, nb_features)
        self.output_slot = TransformSlot()
        self.prompt = PromptSlot()

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.output_slot(self.fn(self.norm(x), key_padding))


class FeedForwardSublayer(nn.Module):
    """``x + FF(LN x)``, plus the ``parallel`` branches fed with ``x``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = Passthrough(FeedForward(dim, mult))
        self.parallel = ParallelSlot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parallel.add_to(x + self.fn(self.norm(x)), x)


class SequentialLayers(nn.Module):
    """Container named ``net`` so the per-layer keys read ``performer.net.layers.{i}.{0,1}``."""

    def __init__(self, layers: list[nn.ModuleList]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class Performer(nn.Module):
    """The layer stack. ``calls_since_last_redraw`` is kept for the key layout only: sctune never
    redraws the projections (they stay as loaded, see ``feature_redraw_interval``)."""

    feature_redraw_interval: int | None = None

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, nb_features: int) -> None:
        super().__init__()
        self.net = SequentialLayers(
            [
                nn.ModuleList(
                    [
                        AttentionSublayer(dim, heads, dim_head, nb_features),
                        FeedForwardSublayer(dim),
                    ]
                )
                for _ in range(depth)
            ]
        )
        self.register_buffer("calls_since_last_redraw", torch.tensor(0))
