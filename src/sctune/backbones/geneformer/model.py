"""Geneformer encoder: transformers' BERT with sctune insertion points.

The HF ``BertModel`` is kept whole under ``bert`` (so checkpoint keys load unchanged); this module
runs its own loop over ``bert.encoder.layer`` to place the slots:

```
h = TransformSlot_in(bert.embeddings(ids))                       # INPUT_EMBEDDING
h = TransformSlot_stream(h)                                      # TOKEN_STREAM (same tensor)
for layer i:
    h, mask = prompt_step(prompt_i, h, mask)                     # PROMPT_TOKENS (insert at 1)
    a  = layer.attention(h, mask)                                # LN(h + Dropout(O(MHA(h))))
    a  = TransformSlot_i(a)                                      # ATTENTION_OUTPUT
    h  = layer.output(layer.intermediate(a), a)                  # LN(a + FFN(a))
    h  = h + sum(ParallelSlot_i branches(a))                     # FFN_PARALLEL, after the LN
h = strip_prompts(h)
```
"""

from __future__ import annotations

import torch
from torch import nn

from sctune.core.cells import EncoderOutput
from sctune.core.surfaces import (
    ParallelSlot,
    PromptSlot,
    PromptState,
    TransformSlot,
    prompt_step,
    strip_prompts,
)


class GeneformerBlockSlots(nn.Module):
    """The empty slots of one BERT layer (identity until an adapter fills them)."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_slot = TransformSlot()
        self.ffn_parallel = ParallelSlot()
        self.prompt = PromptSlot()


class GeneformerEncoder(nn.Module):
    """Geneformer BERT encoder returning cell and token embeddings.

    Parameters
    ----------
    bert_config
        A ``transformers.BertConfig`` (its ``_attn_implementation`` should be ``"sdpa"``).
    pooling
        ``"mean"`` (gene tokens, excluding pads and the V2 specials), ``"cls"`` (position 0) or
        ``"pooler"`` (BERT pooler on position 0; fresh, listed in :attr:`fresh_modules`).
    special_ids
        Token ids excluded from mean pooling (V2 ``<cls>``/``<eos>``).
    prompt_insert_at
        Where prompt tokens go: 1 = after ``<cls>`` (V2) or after the top-ranked gene (V1).
    """

    def __init__(
        self,
        bert_config: object,
        *,
        pooling: str = "mean",
        special_ids: tuple[int, ...] = (),
        prompt_insert_at: int = 1,
    ) -> None:
        super().__init__()
        from transformers import BertModel

        if pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.bert = BertModel(bert_config, add_pooling_layer=pooling == "pooler")
        n_layers = len(self.bert.encoder.layer)
        self.input_slot = TransformSlot()
        # TOKEN_STREAM: right after input_slot, so both see the summed embeddings (this one after
        # input_slot's adapters); outside ``bert``, so HF keys stay unchanged
        self.stream_slot = TransformSlot()
        self.blocks = nn.ModuleList(GeneformerBlockSlots() for _ in range(n_layers))
        self.pooling = pooling
        self.special_ids = tuple(int(i) for i in special_ids)
        self.prompt_insert_at = int(prompt_insert_at)
        self.hidden_size = int(bert_config.hidden_size)
        self.fresh_modules: tuple[str, ...] = ("bert.pooler",) if pooling == "pooler" else ()
        self.load_report: dict[str, object] = {}

    def _attention_mask(
        self, padding_mask: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """Padding mask (True = pad) -> HF 4-D mask ``(B, 1, 1, L)``; ``None`` without padding.

        sdpa takes a boolean mask with True = attend; eager takes an additive float mask.
        """
        if not bool(padding_mask.any()):
            return None
        attend = ~padding_mask[:, None, None, :]
        if self.bert.config._attn_implementation == "sdpa":
            return attend
        additive = torch.zeros(attend.shape, dtype=dtype, device=attend.device)
        return additive.masked_fill(~attend, torch.finfo(dtype).min)

    def encode(
        self, input_ids: torch.Tensor, padding_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token outputs of the last layer (prompts stripped) and the padding mask."""
        h = self.bert.embeddings(input_ids=input_ids)
        h = self.input_slot(h)
        h = self.stream_slot(h)
        state = PromptState(insert_at=self.prompt_insert_at)
        mask = padding_mask
        attn_mask = self._attention_mask(mask, h.dtype)
        for layer, slots in zip(self.bert.encoder.layer, self.blocks):
            before = state.count
            h, mask = prompt_step(slots.prompt, h, mask, state)
            if state.count != before:
                attn_mask = self._attention_mask(mask, h.dtype)
            a, _ = layer.attention(h, attn_mask)
            a = slots.attention_slot(a)
            out = layer.output(layer.intermediate(a), a)
            h = slots.ffn_parallel.add_to(out, a)
        return strip_prompts(h, mask, state)

    def pool(
        self, tokens: torch.Tensor, padding_mask: torch.Tensor, input_ids: torch.Tensor
    ) -> torch.Tensor:
        """Cell embedding from the per-token outputs."""
        if self.pooling == "cls":
            return tokens[:, 0]
        if self.pooling == "pooler":
            return self.bert.pooler(tokens)
        keep = ~padding_mask
        for sid in self.special_ids:
            keep = keep & (input_ids != sid)
        weights = keep.to(tokens.dtype).unsqueeze(-1)
        return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        input_ids = batch["input_ids"].long()
        padding_mask = batch.get("padding_mask")
        if padding_mask is None:
            padding_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        tokens, mask = self.encode(input_ids, padding_mask.bool())
        return EncoderOutput(
            cell=self.pool(tokens, mask, input_ids), tokens=tokens, padding_mask=mask
        )
