"""The integration head and objectives on the encoder output.

The head returns one tensor ``[normalised embedding | batch logits | reconstruction | GEP]``;
the loss splits it (:func:`split_outputs`, :func:`gep_columns`). With DSBN on, the head also owns
a :class:`DomainSpecificBatchNorm` that :meth:`IntegrationHead.bind` hooks onto the backbone's
token-stream slot (the summed token embeddings entering the first block, where scGPT's DSBN sits).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sctune.core.cells import EncoderOutput
from sctune.core.errors import CompatibilityError
from sctune.core.objective import EncoderHead, Masked
from sctune.core.surfaces import Surfaces
from sctune.tasks.batch_correction.plugin import DOMAIN_FIELD

DSBN_EPS = 6.1e-5
"""scGPT's DSBN epsilon (``DomainSpecificBatchNorm1d(d_model, n, eps=6.1e-5)``)."""


class DomainBatchNorm1d(nn.BatchNorm1d):
    """One domain's norm: a plain ``BatchNorm1d`` (same tensors and state-dict keys), a subclass
    only so that multi-process training leaves it alone (``globalise_batchnorm`` converts exact
    ``BatchNorm1d`` modules, whose all-reduce every process must call alike; the processes'
    shares of a minibatch may hold different domains). Under DDP each process normalises its
    share of a domain's cells with its own statistics."""


class DomainSpecificBatchNorm(nn.Module):
    """scGPT's DSBN over per-token embeddings ``(B, L, C)``, with one domain per CELL.

    ``bns[d]`` is a ``BatchNorm1d(C, eps=6.1e-5, momentum=0.1)`` for training domain ``d``
    (state-dict keys ``bns.<d>.weight``, ``.bias``, ``.running_mean``, ``.running_var``,
    ``.num_batches_tracked``, as scGPT's ``dsbn.bns.<d>.*``). The cells of a minibatch are
    grouped by domain and each group goes through its own norm: in training with the group's
    statistics (updating that norm's running statistics), in evaluation with its running
    statistics. scGPT picks one norm per minibatch (its first cell's domain, relying on
    per-batch sampling); with one domain per minibatch the two agree.

    Padding: statistics are taken over the non-padding positions of the group's cells only
    (``padding_mask`` True = padding; scGPT, whose batches are padded to a fixed width, counts
    them) and padding positions pass through unchanged (attention ignores them).

    Unseen domains (``-1``, or any index outside ``0..n-1``: batches without training cells)
    are normalised, in training and evaluation alike, with the average of the domains'
    running means, running variances, weights and biases, and update nothing.

    A group with fewer than 2 non-padding positions in training uses its norm's running
    statistics (a batch norm cannot take statistics of one value).

    In training, the norms of domains absent from the minibatch get a zero gradient (not none):
    the engine's gradient audit and DDP need every trainable tensor in each step's graph. With
    Adam their affine parameters then keep moving by their momentum for a few steps; scGPT,
    whose absent norms get no gradient, leaves them where they are.
    """

    def __init__(
        self, hidden: int, n_domains: int, *, eps: float = DSBN_EPS, momentum: float = 0.1
    ) -> None:
        super().__init__()
        if n_domains < 1:
            raise ValueError(f"DSBN needs at least one domain, got {n_domains}")
        self.eps = eps
        self.bns = nn.ModuleList(
            DomainBatchNorm1d(hidden, eps=eps, momentum=momentum) for _ in range(n_domains)
        )

    @property
    def n_domains(self) -> int:
        return len(self.bns)

    def average(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(running mean, running var, weight, bias)`` averaged over the domains."""
        bns: list[Any] = list(self.bns)
        return (
            torch.stack([bn.running_mean for bn in bns]).mean(0),
            torch.stack([bn.running_var for bn in bns]).mean(0),
            torch.stack([bn.weight for bn in bns]).mean(0),
            torch.stack([bn.bias for bn in bns]).mean(0),
        )

    def forward(
        self,
        x: torch.Tensor,
        domains: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, L, C)``, ``domains`` ``(B,)`` integers, ``padding_mask`` ``(B, L)``."""
        if x.dim() != 3 or domains.shape != x.shape[:1]:
            raise ValueError(
                f"DSBN takes (batch, length, hidden) embeddings and one domain per cell; got "
                f"{tuple(x.shape)} and {tuple(domains.shape)}"
            )
        domains = domains.to(x.device).long()
        known = (domains >= 0) & (domains < self.n_domains)
        domains = torch.where(known, domains, torch.full_like(domains, -1))
        real = (
            torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            if padding_mask is None
            else ~padding_mask.to(x.device).bool()
        )
        out = x.clone()
        used: set[int] = set()
        for d in torch.unique(domains).tolist():
            where = real & (domains == d).unsqueeze(1)
            tokens = x[where].float()
            if tokens.shape[0] == 0:
                continue
            if d < 0:
                mean, var, weight, bias = self.average()
                y = F.batch_norm(tokens, mean, var, weight, bias, False, 0.0, self.eps)
            else:
                bn: Any = self.bns[d]
                used.add(d)
                if bn.training and tokens.shape[0] < 2:
                    y = F.batch_norm(
                        tokens, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                        0.0, bn.eps,
                    )  # fmt: skip
                else:
                    y = bn(tokens)
            out[where] = y.to(out.dtype)
        if self.training and torch.is_grad_enabled():
            # every norm takes part in every training step (gradient 0 without cells): the
            # gradient audit of the first step and DDP refuse trainable tensors without one
            spare = [p for d, bn in enumerate(self.bns) if d not in used for p in bn.parameters()]
            if spare:
                out = out + sum(p.sum() for p in spare) * 0.0
        return out


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

    ``n_domains`` > 0 turns DSBN on: :meth:`bind` builds a :class:`DomainSpecificBatchNorm`
    (``self.dsbn``, sized by the slot's width) and hooks it onto the backbone's token-stream
    slot (the summed token embeddings before the first block and any prompts), with each
    cell's domain read from the batch field :data:`DOMAIN_FIELD` by a forward pre-hook on the
    backbone. Its tensors are the head's (``head.dsbn.*``); the backbone's state dict is
    unchanged.
    """

    dsbn: DomainSpecificBatchNorm | None

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
        n_domains: int = 0,
    ) -> None:
        super().__init__(masked_modelling=gep, mask_ratio=mask_ratio)
        self.grl_lambda = grl_lambda
        self.n_domains = n_domains
        self.dsbn = None
        self._domains: torch.Tensor | None = None  # of the batch the backbone is encoding
        self._padding: torch.Tensor | None = None
        self._hooks: list[Any] = []
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

    def bind(self, module: nn.Module, surfaces: Surfaces) -> None:
        """DSBN: hook :attr:`dsbn` onto ``surfaces.token_stream`` (after its adapters)."""
        if not self.n_domains:
            return
        slot = surfaces.token_stream
        if slot is None:
            raise CompatibilityError(
                "task 'batch_correction': task.dsbn normalises the summed token embeddings that "
                "enter the backbone's first block (insertion point 'token_stream'), which this "
                "backbone module does not provide",
                hint="set task.dsbn=false, or use a backbone that provides token_stream",
            )
        if self._hooks:
            raise RuntimeError("this head is already bound to a backbone")
        self.dsbn = DomainSpecificBatchNorm(surfaces.hidden_size, self.n_domains)
        self._hooks = [
            module.register_forward_pre_hook(self._read_batch),
            slot.register_forward_hook(self._normalise),
            module.register_forward_hook(self._forget),
        ]

    def _read_batch(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        batch = args[0] if args else None
        if isinstance(batch, dict):
            self._domains = batch.get(DOMAIN_FIELD)
            self._padding = batch.get("padding_mask")
        else:
            self._domains = self._padding = None

    def _forget(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._domains = self._padding = None

    def _normalise(
        self, slot: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        if self.dsbn is None:
            return output
        if self._domains is None:
            raise RuntimeError(
                f"DSBN needs each cell's domain in the batch field '{DOMAIN_FIELD}' (the task's "
                "model inputs, which sctune's engine adds); this batch has none"
            )
        pad = self._padding
        if pad is not None and tuple(pad.shape) != tuple(output.shape[:2]):
            pad = None  # a slot whose positions are not the batch's: count every position
        return self.dsbn(output, self._domains, pad)

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
                loss, count, _ = self.objective.score(out.tokens, masked)
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
