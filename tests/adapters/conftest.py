"""A tiny post-norm toy encoder with every insertion point, and helpers for the adapter tests.

The toy is written for these tests only (it is not scGPT): ``<cls>`` at position 0, an input
embedding slot, and per block an attention-output slot, an FFN-parallel slot, a prompt slot and
q/k/v/o/ffn_in/ffn_out projection sites (q/k/v packed in one linear or separate, by flag).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sctune.core.cells import EncoderOutput
from sctune.core.surfaces import (
    BlockSurfaces,
    ParallelSlot,
    ProjectionSite,
    PromptSlot,
    PromptState,
    Surfaces,
    TransformSlot,
    prompt_step,
    strip_prompts,
)

D, HEADS, FF, VOCAB = 16, 2, 24, 30


class ToyBlock(nn.Module):
    def __init__(self, packed: bool, dropout: float) -> None:
        super().__init__()
        self.packed = packed
        if packed:
            self.qkv = nn.Linear(D, 3 * D)
        else:
            self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.o = nn.Linear(D, D)
        self.ffn_in, self.ffn_out = nn.Linear(D, FF), nn.Linear(FF, D)
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.drop = nn.Dropout(dropout)
        self.attention_slot, self.ffn_slot, self.prompt_slot = (
            TransformSlot(),
            ParallelSlot(),
            PromptSlot(),
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        if self.packed:
            q, k, v = self.qkv(h).split(D, dim=-1)
        else:
            q, k, v = self.q(h), self.k(h), self.v(h)
        q, k, v = (t.reshape(b, n, HEADS, D // HEADS).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask[:, None, None, :])
        a = self.norm1(h + self.drop(self.o(att.transpose(1, 2).reshape(b, n, D))))
        a = self.attention_slot(a)
        out = self.norm2(a + self.drop(self.ffn_out(F.relu(self.ffn_in(a)))))
        return self.ffn_slot.add_to(out, a)


class ToyEncoder(nn.Module):
    fresh_modules: tuple[str, ...] = ()

    def __init__(self, n_blocks: int = 4, packed: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden_size = D
        self.embedding = nn.Embedding(VOCAB, D)
        self.value = nn.Linear(1, D)
        self.input_slot = TransformSlot()
        self.blocks = nn.ModuleList(ToyBlock(packed, dropout) for _ in range(n_blocks))

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        mask = batch["padding_mask"]
        h = self.embedding(batch["gene_ids"]) + self.input_slot(
            self.value(batch["values"][..., None])
        )
        state = PromptState(insert_at=1)
        for block in self.blocks:
            h, mask = prompt_step(block.prompt_slot, h, mask, state)
            h = block(h, mask)
        h, mask = strip_prompts(h, mask, state)
        return EncoderOutput(cell=h[:, 0], tokens=h, padding_mask=mask)


def toy_surfaces(module: ToyEncoder) -> Surfaces:
    blocks = []
    for blk in module.blocks:
        if blk.packed:
            proj = {
                name: ProjectionSite(blk, "qkv", slice(i * D, (i + 1) * D))
                for i, name in enumerate("qkv")
            }
        else:
            proj = {name: ProjectionSite(blk, name) for name in "qkv"}
        proj.update(
            o=ProjectionSite(blk, "o"),
            ffn_in=ProjectionSite(blk, "ffn_in"),
            ffn_out=ProjectionSite(blk, "ffn_out"),
        )
        blocks.append(
            BlockSurfaces(
                attention_output=blk.attention_slot,
                ffn_parallel=blk.ffn_slot,
                projections=proj,
                prompt=blk.prompt_slot,
            )
        )
    return Surfaces(hidden_size=D, input_embedding=module.input_slot, blocks=tuple(blocks))


def toy_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 5, 3]
    ids = torch.randint(1, VOCAB, (3, 7), generator=g)
    values = torch.rand(3, 7, generator=g) * 5
    mask = torch.arange(7)[None, :] >= torch.tensor(lengths)[:, None]
    ids[:, 0] = 0  # <cls>
    return {"gene_ids": ids, "values": values, "padding_mask": mask}


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def apply_like_engine(adapter_cls, module, surfaces, **options):
    """Freeze the backbone (first call only), apply, enable exactly the handle's tensors."""
    if not getattr(module, "_frozen_by_test", False):  # the engine freezes once, up front
        freeze(module)
        module._frozen_by_test = True
    handle = adapter_cls().apply(module, surfaces, adapter_cls.config_cls(**options))
    for p in handle.parameters:
        p.requires_grad_(True)
    return handle


def randomize(params) -> None:
    """Give every adapter tensor non-zero values (so LoRA B / zero prompts do something)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture
def toy():
    torch.manual_seed(0)
    module = ToyEncoder()
    return module, toy_surfaces(module)


@pytest.fixture
def toy_unpacked():
    torch.manual_seed(0)
    module = ToyEncoder(packed=False)
    return module, toy_surfaces(module)


@pytest.fixture
def kit():
    """The helpers above as one namespace (test modules never import conftest directly)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        ToyEncoder=ToyEncoder,
        surfaces=toy_surfaces,
        batch=toy_batch,
        freeze=freeze,
        apply=apply_like_engine,
        randomize=randomize,
    )
