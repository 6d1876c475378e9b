"""The integration head and objectives on the encoder output.

The head returns one tensor ``[normalised embedding | batch logits | reconstruction | GEP]``;
the loss splits it (:func:`split_outputs`, :func:`gep_columns`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sctune.core.cells import EncoderOutput
from sctune.core.objective import EncoderHead, Masked


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


class IntegrationHead(EncoderHead):
    """Encoder output -> ``[unit embedding (d) | batch logits | expr (n_hvg) | GEP (2)]``.

    ``n_batches`` 0 drops the discriminator (DAR off); ``n_hvg`` 0 drops the decoder (GEPC off);
    ``gep`` False drops the two GEP columns (summed masked loss, number of masked tokens), which
    come from the backbone's masked-modelling objective on the per-token outputs.
    """

    def __init__(
        self,
        d_model: int,
        n_batches: int,
        n_hvg: int,
        *,
        gep: bool = False,
        mask_ratio: float | None = None,
        discriminator_layers: int = 3,
        grl_lambda: float = 1.0,
    ) -> None:
        super().__init__(masked_modelling=gep, mask_ratio=mask_ratio)
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

    def forward(
        self, out: EncoderOutput, batch: dict[str, torch.Tensor], masked: Masked | None
    ) -> torch.Tensor:
        x = out.cell
        parts = [F.normalize(x, p=2, dim=1)]
        if self.discriminator is not None:
            parts.append(self.discriminator(grad_reverse(x, self.grl_lambda)))
        if self.decoder is not None:
            parts.append(self.decoder(x))
        if self.masked_modelling:
            if masked is None or self.objective is None or out.tokens is None:
                parts.append(x.new_zeros(x.shape[0], 2))
            else:
                loss, count, _ = self.objective.per_cell(self.objective.decode(out.tokens), masked)
                parts.append(torch.stack([loss, count], dim=1).to(x.dtype))
        return torch.cat(parts, dim=1)

    def merge(self, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """Everything from the clean cells, the GEP columns from their corrupted copy."""
        return torch.cat([clean[:, :-2], corrupted[:, -2:]], dim=1)


def split_outputs(
    out: torch.Tensor, n_batches: int, n_hvg: int, gep: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(unit embedding, batch logits, reconstruction)`` from the head's concatenated output
    (the GEP columns, when ``gep``, are the last two: :func:`gep_columns`)."""
    extra = 2 if gep else 0
    d = out.shape[1] - n_batches - n_hvg - extra
    return out[:, :d], out[:, d : d + n_batches], out[:, d + n_batches : d + n_batches + n_hvg]


def gep_columns(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed masked loss, masked token count)`` per cell: the head's last two columns."""
    return out[:, -2], out[:, -1]


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
