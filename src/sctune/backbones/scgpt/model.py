"""scGPT's encoder path (``TransformerModel._encode``), written for sctune.

Parameter names follow scGPT 0.2.4 (which follow torch's ``TransformerEncoderLayer``) so a
checkpoint loads with at most the renames in :mod:`.weights`. Differences from the reference:

- attention is computed here from ``self_attn.Wqkv`` (a plain ``nn.Linear``, rows Q, K, V) with
  ``scaled_dot_product_attention``; never ``nn.MultiheadAttention`` or ``nn.TransformerEncoder``,
  whose eval fast path would skip adapters (methods.md section 15.2);
- attention-probability dropout is its own knob (``attention_dropout``);
- no decoders (ExprDecoder, MVC, ClsDecoder): the task head lives outside the backbone;
- empty insertion-point slots (identity until an adapter attaches something).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class GeneEncoder(nn.Module):
    """Gene-id embedding followed by LayerNorm (``encoder.embedding``, ``encoder.enc_norm``)."""

    def __init__(self, ntoken: int, d_model: int, pad_id: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(ntoken, d_model, padding_idx=pad_id)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(ids))


class ContinuousValueEncoder(nn.Module):
    """``dropout(slot(LN(W2 ReLU(W1 min(x, 512)))))``; ``input_slot`` is the INPUT_EMBEDDING point."""

    def __init__(self, d_model: int, dropout: float, max_value: float = 512.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.input_slot = TransformSlot()
        self.dropout = nn.Dropout(dropout)
        self.max_value = max_value

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(values.unsqueeze(-1), max=self.max_value)
        x = self.norm(self.linear2(self.activation(self.linear1(x))))
        return self.dropout(self.input_slot(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed ``Wqkv`` projection (rows Q, K, V).

    The projections are always *called* (``self.Wqkv(x)``, ``self.out_proj(x)``), so a wrapper
    put in their place by an adapter runs.
    """

    def __init__(self, d_model: int, nheads: int, attention_dropout: float) -> None:
        super().__init__()
        if d_model % nheads:
            raise ValueError(f"embsize {d_model} is not divisible by nheads {nheads}")
        self.d_model, self.nheads = d_model, nheads
        self.attention_dropout = attention_dropout
        self.Wqkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.Wqkv(x).split(d, dim=-1)
        q, k, v = (
            t.reshape(b, n, self.nheads, d // self.nheads).transpose(1, 2) for t in (q, k, v)
        )
        keep = ~padding_mask[:, None, None, :]  # True = attend
        p = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Post-norm layer with ReLU FFN and scPEFT's insertion points.

    ``a = LN1(h + drop1(attn(h)))``; ``a' = attention_slot(a)``;
    ``out = LN2(a' + drop2(W2 drop(ReLU(W1 a'))))``; ``out = ffn_slot.add_to(out, a')``.
    """

    def __init__(
        self, d_model: int, nheads: int, d_hid: int, dropout: float, attention_dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d_model, nheads, attention_dropout)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU()
        self.attention_slot = TransformSlot()
        self.ffn_slot = ParallelSlot()
        self.prompt_slot = PromptSlot()

    def forward(self, h: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        a = self.norm1(h + self.dropout1(self.self_attn(h, padding_mask)))
        a = self.attention_slot(a)
        ffn = self.linear2(self.dropout(self.activation(self.linear1(a))))
        out = self.norm2(a + self.dropout2(ffn))
        return self.ffn_slot.add_to(out, a)


class TransformerEncoder(nn.Module):
    """A stack of :class:`EncoderLayer` (``transformer_encoder.layers.{i}``)."""

    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class ScGPTEncoder(nn.Module):
    """scGPT's encoder: ``h = stream_slot(enc_norm(emb(ids)) + value_encoder(values))``, then
    post-norm layers (``stream_slot`` is the TOKEN_STREAM point; prompts are inserted after it).

    ``forward(batch)`` reads ``gene_ids`` (long), ``values`` (float) and ``padding_mask`` (bool,
    ``True`` = padding; derived from ``gene_ids == pad_id`` when absent) and returns the ``<cls>``
    output as the cell embedding.
    """

    fresh_modules: tuple[str, ...] = ()

    def __init__(
        self,
        ntoken: int,
        *,
        pad_id: int,
        embsize: int = 512,
        nheads: int = 8,
        d_hid: int = 512,
        nlayers: int = 12,
        dropout: float = 0.2,
        attention_dropout: float = 0.0,
        pooling: str = "cls",
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.hidden_size = embsize
        self.pad_id = pad_id
        self.encoder = GeneEncoder(ntoken, embsize, pad_id)
        self.value_encoder = ContinuousValueEncoder(embsize, dropout)
        # TOKEN_STREAM point: on gene + value embeddings, before prompts and layer 0 (where
        # scGPT's own DSBN sits); empty, so it adds no state_dict keys
        self.stream_slot = TransformSlot()
        self.transformer_encoder = TransformerEncoder(
            [
                EncoderLayer(embsize, nheads, d_hid, dropout, attention_dropout)
                for _ in range(nlayers)
            ]
        )
        if not self.encoder.embedding.weight.is_meta:
            # scGPT's init_weights: uniform(-0.1, 0.1) on the gene embedding (incl. the pad row)
            with torch.no_grad():
                self.encoder.embedding.weight.uniform_(-0.1, 0.1)

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer_encoder.layers

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        ids = batch["gene_ids"].long()
        mask = batch.get("padding_mask")
        if mask is None:
            mask = ids == self.pad_id
        mask = mask.to(device=ids.device, dtype=torch.bool)
        h = self.encoder(ids) + self.value_encoder(
            batch["values"].to(self.encoder.enc_norm.weight)
        )
        h = self.stream_slot(h)
        state = PromptState(insert_at=1)  # after <cls>
        for layer in self.transformer_encoder.layers:
            h, mask = prompt_step(layer.prompt_slot, h, mask, state)
            h = layer(h, mask)
        h, mask = strip_prompts(h, mask, state)
        if self.pooling == "mean":  # gene tokens only: not <cls>, not padding
            keep = (~mask).to(h.dtype).unsqueeze(-1)
            keep[:, 0] = 0.0
            cell = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        else:
            cell = h[:, 0]
        return EncoderOutput(cell=cell, tokens=h, padding_mask=mask)
