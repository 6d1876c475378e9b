"""scBERT's masked expression-bin prediction: mask bins of expressed genes, classify each token.

The decoder is scBERT's language-model head ``to_out`` (``Linear(dim, 7)``: bins 0..5 and the
mask token), copied from the module (and so from the checkpoint) and trained in the head, so
the frozen backbone tensor never changes in a parameter-efficient run. Only genes with a
non-zero bin are masked (zero bins are the large majority and would make the task trivial);
masked tokens take the mask token 6. ``mask_unexpressed`` (the backbone option of that name) also
masks that fraction of each cell's zero-bin genes, drawn separately, so the objective asks which
genes the cell expresses as well as at which level.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from sctune.core.objective import Masked, MaskedModelling, draw_positions

NUM_TOKENS = 7
MASK_TOKEN = 6


class ScBERTMaskedBins(MaskedModelling):
    kind: ClassVar[Literal["regression", "classification"]] = "classification"
    default_ratio: ClassVar[float] = 0.15
    description: ClassVar[str] = (
        "masked expression bins of expressed genes (mask token 6), cross-entropy over 7 tokens"
    )

    def __init__(self, dim: int, n_genes: int, *, mask_unexpressed: float = 0.0) -> None:
        super().__init__()
        self.to_out = nn.Linear(dim, NUM_TOKENS)
        self.n_genes = int(n_genes)
        self.mask_unexpressed = float(mask_unexpressed)

    def mask(
        self, batch: dict[str, torch.Tensor], ratio: float, generator: torch.Generator | None
    ) -> Masked:
        tokens = batch["tokens"].long()
        genes = torch.zeros_like(tokens, dtype=torch.bool)
        genes[:, : self.n_genes] = True
        pad = batch.get("padding_mask")
        if pad is not None:
            genes &= ~pad.bool()
        eligible = genes & (tokens > 0) & (tokens < MASK_TOKEN)
        positions = draw_positions(eligible, ratio, generator)
        if self.mask_unexpressed > 0:
            positions |= draw_positions(genes & (tokens == 0), self.mask_unexpressed, generator)
        out = dict(batch)
        out["tokens"] = tokens.masked_fill(positions, MASK_TOKEN).to(batch["tokens"].dtype)
        return Masked(out, positions, tokens)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.to_out(tokens)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {"to_out." + k: v.detach().cpu() for k, v in self.to_out.state_dict().items()}
