"""The integration head and objectives on the cell embedding (plain torch, no sctune imports).

The head returns one tensor ``[normalised embedding | batch logits | reconstruction]``; the loss
splits it (:func:`split_outputs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``-lambd`` on the way back."""
    return _GradReverse.apply(x, lambd)


class AdversarialDiscriminator(nn.Module):
    """scGPT's batch discriminator: [Linear-LeakyReLU-LayerNorm] x (layers-1), then Linear."""

    def __init__(self, d_model: int, n_batches: int, n_layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for _ in range(n_layers - 1):
            blocks += [nn.Linear(d_model, d_model), nn.LeakyReLU(), nn.LayerNorm(d_model)]
        self._decoder = nn.Sequential(*blocks)
        self.out_layer = nn.Linear(d_model, n_batches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self._decoder(x))


class IntegrationHead(nn.Module):
    """Cell embedding ``(B, d)`` -> ``[unit embedding (d) | batch logits (n_batches) | expr (n_hvg)]``.

    ``n_batches`` 0 drops the discriminator (DAR off); ``n_hvg`` 0 drops the decoder (GEPC off).
    """

    def __init__(
        self,
        d_model: int,
        n_batches: int,
        n_hvg: int,
        *,
        discriminator_layers: int = 3,
        grl_lambda: float = 1.0,
    ) -> None:
        super().__init__()
        self.grl_lambda = grl_lambda
        self.discriminator = (
            AdversarialDiscriminator(d_model, n_batches, discriminator_layers)
            if n_batches
            else None
        )
        self.decoder = (
            nn.Sequential(nn.Linear(d_model, d_model), nn.LeakyReLU(), nn.Linear(d_model, n_hvg))
            if n_hvg
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [F.normalize(x, p=2, dim=1)]
        if self.discriminator is not None:
            parts.append(self.discriminator(grad_reverse(x, self.grl_lambda)))
        if self.decoder is not None:
            parts.append(self.decoder(x))
        return torch.cat(parts, dim=1)


def split_outputs(
    out: torch.Tensor, n_batches: int, n_hvg: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(unit embedding, batch logits, reconstruction)`` from the head's concatenated output."""
    d = out.shape[1] - n_batches - n_hvg
    return out[:, :d], out[:, d : d + n_batches], out[:, d + n_batches :]


def ecs_loss(unit: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    """scGPT's elastic cell similarity on L2-normalised embeddings ``unit`` (B, d).

    ``mean(1 - (relu(cos) - threshold)^2)`` over the B x B cosine matrix with its diagonal set
    to 0 (as scGPT does: the diagonal stays in the mean). Minimising it pushes pairs above the
    threshold closer together and pairs below it apart.
    """
    cos = unit @ unit.t()
    eye = torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)
    cos = F.relu(cos.masked_fill(eye, 0.0))
    return torch.mean(1.0 - (cos - threshold) ** 2)
