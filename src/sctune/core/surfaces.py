"""Insertion points: the few places where an adapter may act on a backbone.

A backbone declares which of these it provides (``Backbone.provides``) and returns the concrete
objects from ``Backbone.surfaces(module)``; an adapter declares what it requires
(``Adapter.requires``) and acts only through these objects. No adapter knows which backbone it is
on, and no backbone contains adapter code.

The slots are ``nn.Module`` containers that live inside the backbone module and are identity until
an adapter attaches something, so adapter tensors appear in ``module.named_parameters()`` under
stable names (e.g. ``blocks.0.attention_slot.adapters.0.down.weight``).

Conventions: hidden states are ``(batch, length, hidden)``; ``padding_mask`` is boolean with
``True`` = padding (ignored by attention).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from sctune.core.capabilities import Capability


class TransformSlot(nn.Module):
    """``x -> f_n(...f_1(x))``; identity while empty. Adapters append to :attr:`adapters`."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for adapter in self.adapters:
            x = adapter(x)
        return x


class ParallelSlot(nn.Module):
    """Branches fed with one input whose outputs are summed onto another tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList()

    def add_to(self, out: torch.Tensor, branch_input: torch.Tensor) -> torch.Tensor:
        """Return ``out + sum(branch(branch_input))`` (``out`` itself while empty)."""
        for branch in self.branches:
            out = out + branch(branch_input)
        return out


class PromptSlot(nn.Module):
    """Holds the prompt tokens ``(T, hidden)`` of one block, or ``None``.

    Backbones call :func:`prompt_step` before each block and :func:`strip_prompts` after the last.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prompts: nn.Parameter | None = None

    def set(self, prompts: nn.Parameter) -> None:
        if prompts.dim() != 2:
            raise ValueError(f"prompts must be (tokens, hidden), got {tuple(prompts.shape)}")
        self.prompts = prompts


@dataclass
class PromptState:
    """Where prompts go (``insert_at``: index after any leading special token) and how many."""

    insert_at: int
    count: int = 0


def prompt_step(
    slot: PromptSlot | None,
    hidden: torch.Tensor,
    padding_mask: torch.Tensor,
    state: PromptState,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert (first prompted block) or replace (later prompted blocks) the prompt positions.

    The first prompted block inserts ``T`` positions at ``state.insert_at`` and extends the mask
    with ``False`` (attend); later prompted blocks overwrite those positions with their own
    prompts; blocks without prompts carry them along unchanged.
    """
    if slot is None or slot.prompts is None:
        return hidden, padding_mask
    prompts = slot.prompts.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
    n, at = prompts.shape[1], state.insert_at
    if state.count == 0:
        hidden = torch.cat([hidden[:, :at], prompts, hidden[:, at:]], dim=1)
        extra = torch.zeros(hidden.shape[0], n, dtype=torch.bool, device=padding_mask.device)
        padding_mask = torch.cat([padding_mask[:, :at], extra, padding_mask[:, at:]], dim=1)
        state.count = n
    elif n != state.count:
        raise ValueError(f"prompt blocks disagree on the token count: {n} vs {state.count}")
    else:
        hidden = torch.cat([hidden[:, :at], prompts, hidden[:, at + n :]], dim=1)
    return hidden, padding_mask


def strip_prompts(
    hidden: torch.Tensor, padding_mask: torch.Tensor, state: PromptState
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the prompt positions so pooling and decoders see the original positions."""
    if state.count == 0:
        return hidden, padding_mask
    at, n = state.insert_at, state.count
    keep = torch.cat([hidden[:, :at], hidden[:, at + n :]], dim=1)
    mask = torch.cat([padding_mask[:, :at], padding_mask[:, at + n :]], dim=1)
    return keep, mask


@dataclass(frozen=True)
class ProjectionSite:
    """A projection an adapter may wrap: ``getattr(owner, attr)`` is an ``nn.Linear``.

    ``rows`` selects this projection's output rows when several share one packed linear (scGPT's
    Q/K/V in one ``Wqkv``); ``None`` means the whole linear. The backbone must call the module
    (``owner.attr(x)``), never read its ``.weight`` directly, so a wrapper placed with
    ``setattr(owner, attr, wrapper)`` is always executed.
    """

    owner: nn.Module
    attr: str
    rows: slice | None = None

    @property
    def module(self) -> nn.Module:
        return getattr(self.owner, self.attr)


PROJECTION_NAMES = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class BlockSurfaces:
    """The insertion points of one encoder block (``None``: not provided)."""

    attention_output: TransformSlot | None = None
    ffn_parallel: ParallelSlot | None = None
    projections: Mapping[str, ProjectionSite] = field(default_factory=dict)
    prompt: PromptSlot | None = None


@dataclass(frozen=True)
class Surfaces:
    """Everything an adapter may touch on one built backbone module.

    ``notes`` maps a capability to a sentence saying where it sits on this backbone (shown by
    ``sctune plugins`` and in run reports).
    """

    hidden_size: int
    input_embedding: TransformSlot | None
    blocks: tuple[BlockSurfaces, ...]
    notes: Mapping[str, str] = field(default_factory=dict)

    def provides(self) -> frozenset[Capability]:
        caps: set[Capability] = set()
        if self.input_embedding is not None:
            caps.add(Capability.INPUT_EMBEDDING)
        if self.blocks and all(b.attention_output is not None for b in self.blocks):
            caps.add(Capability.ATTENTION_OUTPUT)
        if self.blocks and all(b.ffn_parallel is not None for b in self.blocks):
            caps.add(Capability.FFN_PARALLEL)
        if self.blocks and all(b.projections for b in self.blocks):
            caps.add(Capability.PROJECTIONS)
        if self.blocks and all(b.prompt is not None for b in self.blocks):
            caps.add(Capability.PROMPT_TOKENS)
        return frozenset(caps)
