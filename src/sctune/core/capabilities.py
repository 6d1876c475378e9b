"""Capabilities: names of insertion points (no torch import, so listing plugins stays cheap)."""

from __future__ import annotations

from enum import Enum


class Capability(str, Enum):
    """What a backbone provides and an adapter requires."""

    INPUT_EMBEDDING = "input_embedding"
    """A transform on the expression/token embedding output, before the first block."""
    TOKEN_STREAM = "token_stream"
    """A transform on the summed token embeddings that enter the first block (after every
    embedding is added; before any prompt tokens are inserted)."""
    ATTENTION_OUTPUT = "attention_output"
    """Per block: a transform on the stream right after the attention sub-block."""
    FFN_PARALLEL = "ffn_parallel"
    """Per block: a branch fed with the feed-forward sub-block's input, added to the block output."""
    PROJECTIONS = "projections"
    """Per block: the attention q/k/v/o (and ffn_in/ffn_out) projections as plain ``nn.Linear``."""
    PROMPT_TOKENS = "prompt_tokens"
    """Per block: learned tokens inserted at the block input; mask extended, stripped at the end."""
    MASKED_MODELLING = "masked_modelling"
    """Not an insertion point: the backbone offers its own masked pretraining objective
    (``Backbone.masked_modelling``); tasks that reconstruct masked inputs require it."""

    def __str__(self) -> str:
        return self.value


INSERTION_POINTS = frozenset(c for c in Capability if c is not Capability.MASKED_MODELLING)
"""The capabilities that are places in the module (what ``Surfaces.provides()`` can report)."""
