"""The pretraining head: the backbone's masked-modelling decoder, plus optional GEPC.

Per cell the head returns ``[summed masked loss, masked tokens, correct tokens | GEPC]``: the
first three from the backbone's :class:`~sctune.core.objective.MaskedModelling` on the
per-token outputs, then (with ``n_hvg`` > 0) the predicted log-normalised expression of the
task's highly variable genes from the CELL embedding. The masked objective alone never trains
the cell embedding (scGPT's ``<cls>`` output, a pooler); GEPC does.
"""

from __future__ import annotations

import torch
from torch import nn

from sctune.core.cells import EncoderOutput
from sctune.core.objective import EncoderHead, Masked

MASKED_COLUMNS = 3


class MaskedModellingHead(EncoderHead):
    def __init__(self, d_model: int, n_hvg: int = 0, *, mask_ratio: float | None = None) -> None:
        super().__init__(
            masked_modelling=True, mask_ratio=mask_ratio, reads_cell_embedding=n_hvg > 0
        )
        self.decoder = (
            nn.Sequential(nn.Linear(d_model, d_model), nn.LeakyReLU(), nn.Linear(d_model, n_hvg))
            if n_hvg
            else None
        )

    def forward(
        self, out: EncoderOutput, batch: dict[str, torch.Tensor], masked: Masked | None
    ) -> torch.Tensor:
        cell = out.cell
        if masked is None or self.objective is None or out.tokens is None:
            parts = [cell.new_zeros(cell.shape[0], MASKED_COLUMNS)]
        else:
            loss, count, correct = self.objective.score(out.tokens, masked)
            parts = [torch.stack([loss, count, correct], dim=1).to(cell.dtype)]
        if self.decoder is not None:
            parts.append(self.decoder(cell))
        return torch.cat(parts, dim=1)

    def merge(self, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """The masked-modelling columns from the corrupted copy, GEPC from the clean cells."""
        return torch.cat([corrupted[:, :MASKED_COLUMNS], clean[:, MASKED_COLUMNS:]], dim=1)
