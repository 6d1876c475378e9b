"""scGPT's masked gene-expression prediction (GEP): mask binned values, predict them per token.

The decoder is scGPT's ``ExprDecoder`` without explicit zero probabilities
(``decoder.fc.{0,2,4}``: d -> d -> d -> 1 with LeakyReLU), so its tensors load from and write
back to a real checkpoint under the same names. Masked inputs take scGPT's ``mask_value`` (-1);
``<cls>`` (position 0) and padding are never masked; the loss is the MSE on masked positions
(scGPT's ``masked_mse_loss``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from torch import nn

from sctune.core.objective import Masked, MaskedModelling, draw_positions

PREFIX = "decoder."


class ScGPTMaskedExpression(MaskedModelling):
    kind: ClassVar[Literal["regression", "classification"]] = "regression"
    default_ratio: ClassVar[float] = 0.4
    description: ClassVar[str] = (
        "masked expression-bin values (mask value -1), MSE from each token's output (GEP)"
    )

    def __init__(self, d_model: int, *, pad_id: int, mask_value: float = -1.0) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, 1),
        )
        self.pad_id = pad_id
        self.mask_value = mask_value

    def mask(
        self, batch: dict[str, torch.Tensor], ratio: float, generator: torch.Generator | None
    ) -> Masked:
        ids = batch["gene_ids"]
        pad = batch.get("padding_mask")
        if pad is None:
            pad = ids == self.pad_id
        eligible = ~pad.bool()
        eligible[:, 0] = False  # <cls>
        positions = draw_positions(eligible, ratio, generator)
        values = batch["values"]
        out = dict(batch)
        out["values"] = values.masked_fill(positions, self.mask_value)
        return Masked(out, positions, values.float())

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens).squeeze(-1)

    def load(self, state: Mapping[str, torch.Tensor]) -> bool:
        """Load ``decoder.fc.*`` from a checkpoint state; False when it has none."""
        keys = {k.removeprefix("module."): v for k, v in state.items()}
        mine = {k[len(PREFIX) :]: v for k, v in keys.items() if k.startswith(PREFIX + "fc.")}
        if set(mine) != set(self.state_dict()):
            return False
        self.load_state_dict(mine, strict=True)
        return True

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v.detach().cpu() for k, v in self.state_dict().items()}
