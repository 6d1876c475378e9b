"""Geneformer's masked-token prediction over rank-value encodings (BertForMaskedLM's objective).

The decoder is transformers' ``BertLMPredictionHead`` (dense + GELU/ReLU + LayerNorm, then a
projection onto the vocabulary), kept under ``cls.predictions.*`` as in a ``BertForMaskedLM``
checkpoint. In the real model the projection is tied to the word embeddings; here it starts as a
copy of them (or of the checkpoint's ``cls.predictions``), so the frozen embedding table is never
changed by a parameter-efficient run. Masking follows BERT: of the chosen tokens, 80 % become
``<mask>``, 10 % a random gene token, 10 % stay; padding and ``<cls>``/``<eos>`` are never chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch

from sctune.core.objective import Masked, MaskedModelling, draw_positions

PREFIX = "cls."


class GeneformerMaskedTokens(MaskedModelling):
    kind: ClassVar[Literal["regression", "classification"]] = "classification"
    default_ratio: ClassVar[float] = 0.15
    description: ClassVar[str] = (
        "masked rank-value gene tokens (BERT 80/10/10), cross-entropy over the vocabulary"
    )

    def __init__(
        self,
        bert_config: Any,
        *,
        pad_id: int,
        mask_id: int,
        special_ids: tuple[int, ...] = (),
        first_gene_id: int = 0,
    ) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertLMPredictionHead

        self.predictions = BertLMPredictionHead(bert_config)
        # one output bias, as BertForMaskedLM ties them (some transformers versions tie it only
        # in PreTrainedModel.tie_weights)
        self.predictions.decoder.bias = self.predictions.bias
        self.pad_id, self.mask_id = int(pad_id), int(mask_id)
        self.special_ids = tuple(int(i) for i in special_ids)
        self.first_gene_id = int(first_gene_id)
        self.vocab_size = int(bert_config.vocab_size)

    def mask(
        self, batch: dict[str, torch.Tensor], ratio: float, generator: torch.Generator | None
    ) -> Masked:
        ids = batch["input_ids"].long()
        pad = batch.get("padding_mask")
        eligible = ~(pad.bool() if pad is not None else ids == self.pad_id)
        for sid in (self.pad_id, self.mask_id, *self.special_ids):
            eligible &= ids != sid
        positions = draw_positions(eligible, ratio, generator)
        u = torch.rand(ids.shape, generator=generator).to(ids.device)
        random_ids = torch.randint(
            self.first_gene_id, self.vocab_size, ids.shape, generator=generator
        ).to(ids.device)
        out_ids = torch.where(positions & (u < 0.8), torch.full_like(ids, self.mask_id), ids)
        out_ids = torch.where(positions & (u >= 0.8) & (u < 0.9), random_ids, out_ids)
        out = dict(batch)
        out["input_ids"] = out_ids.to(batch["input_ids"].dtype)
        return Masked(out, positions, ids)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.predictions(tokens)

    def load(self, state: Mapping[str, torch.Tensor]) -> bool:
        """Load ``cls.predictions.*`` (the decoder's weight falls back to the word embeddings,
        as the tie does in the real model); False when the checkpoint has none."""
        mine = {
            k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX + "predictions.")
        }
        if not mine:
            return False
        own = self.state_dict()
        if "predictions.decoder.weight" not in mine:
            emb = state.get("bert.embeddings.word_embeddings.weight")
            if emb is None:
                return False
            mine["predictions.decoder.weight"] = emb
        if "predictions.bias" in mine:
            mine.setdefault("predictions.decoder.bias", mine["predictions.bias"])
        picked = {k: mine[k] for k in own if k in mine}
        if set(picked) != set(own) or any(picked[k].shape != own[k].shape for k in own):
            return False
        self.load_state_dict(picked, strict=True)
        return True

    def tie_to(self, embeddings: torch.Tensor) -> None:
        """Start the projection from the word embeddings (the real model's tied weights)."""
        with torch.no_grad():
            self.predictions.decoder.weight.copy_(embeddings)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        state = {PREFIX + k: v.detach().cpu() for k, v in self.state_dict().items()}
        state.pop(PREFIX + "predictions.decoder.bias", None)  # an alias of predictions.bias
        return state
