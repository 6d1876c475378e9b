"""scBERT as an sctune encoder: Performer LM body, frozen gene2vec positions, cell pooling.

State-dict keys of the pretrained part follow scBERT's checkpoint layout (``docs/backbones.md``
3.2); the freshly initialised pooling stem lives under ``stem.*`` and is never read from a
checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from sctune.backbones.scbert.performer import Performer, default_nb_features
from sctune.core.cells import EncoderOutput
from sctune.core.surfaces import PromptState, TransformSlot, prompt_step, strip_prompts

NUM_TOKENS = 7  # expression levels 0..5 and the mask token 6
MASK_TOKEN = 6
MAX_LEVEL = 5


class PositionTable(nn.Module):
    """Frozen gene2vec table ``emb.weight (n_genes + 1, dim)``; a gene is its position."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(rows, dim)
        self.emb.weight.requires_grad_(False)

    def forward(self, length: int) -> torch.Tensor:
        return self.emb.weight[:length]


class ScBERTStem(nn.Module):
    """scBERT's head minus its last two layers: conv 1 x dim, ReLU, flatten, fc1, ReLU, dropout."""

    def __init__(self, dim: int, positions: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, (1, dim))
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(positions, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(hidden.unsqueeze(1))).flatten(1)
        return self.dropout(self.act(self.fc1(x)))


class ScBERTModel(nn.Module):
    """Token embedding + gene2vec positions -> Performer -> final norm -> cell embedding.

    Parameters
    ----------
    n_genes
        Length of the gene order; the input has ``n_genes + 1`` positions.
    dim, depth, heads, dim_head, nb_features
        Performer sizes (scBERT: 200, 6, 10, 64, 266).
    pooling
        ``"scbert"``: the fresh conv/fc1 stem (``hidden_size = stem_hidden``); ``"mean"``: mean of
        the final-norm outputs over the gene positions (``hidden_size = dim``);
        ``"mean_expressed"``: the same over the positions whose token (expression bin) is not 0.
    """

    def __init__(
        self,
        n_genes: int,
        *,
        dim: int = 200,
        depth: int = 6,
        heads: int = 10,
        dim_head: int = 64,
        nb_features: int | None = None,
        pooling: str = "scbert",
        stem_hidden: int = 512,
        stem_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.dim = dim
        self.pooling = pooling
        nb_features = nb_features or default_nb_features(dim_head)
        self.token_emb = nn.Embedding(NUM_TOKENS, dim)
        self.pos_emb = PositionTable(n_genes + 1, dim)
        self.input_slot = TransformSlot()
        # TOKEN_STREAM: right after input_slot (same summed embeddings, after its adapters)
        self.stream_slot = TransformSlot()
        self.performer = Performer(dim, depth, heads, dim_head, nb_features)
        self.norm = nn.LayerNorm(dim)
        self.to_out = nn.Linear(dim, NUM_TOKENS)  # pretraining LM head: loadable, unused here
        if pooling == "scbert":
            self.stem: ScBERTStem | None = ScBERTStem(dim, n_genes + 1, stem_hidden, stem_dropout)
            self.hidden_size = stem_hidden
            self.fresh_modules: tuple[str, ...] = ("stem",)
        elif pooling in ("mean", "mean_expressed"):
            self.stem = None
            self.hidden_size = dim
            self.fresh_modules = ()
        else:
            raise ValueError(f"unknown pooling {pooling!r}")
        # gene2vec stays frozen (as in scBERT); the LM head is unused for cell embeddings
        self.always_frozen = ("pos_emb.emb.weight", "to_out.weight", "to_out.bias")

    @property
    def layers(self) -> nn.ModuleList:
        return self.performer.net.layers

    def encode(
        self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-norm outputs ``(batch, n_genes + 1, dim)`` (prompts stripped) and the mask."""
        b, n = tokens.shape
        if n != self.n_genes + 1:
            raise ValueError(f"scBERT input must have {self.n_genes + 1} positions, got {n}")
        if padding_mask is None:
            padding_mask = torch.zeros(b, n, dtype=torch.bool, device=tokens.device)
        x = self.token_emb(tokens) + self.pos_emb(n).to(self.token_emb.weight.dtype)
        x = self.input_slot(x)
        x = self.stream_slot(x)
        state = PromptState(insert_at=0)
        for attn, ff in self.layers:
            x, padding_mask = prompt_step(attn.prompt, x, padding_mask, state)
            x = attn(x, padding_mask)
            x = ff(x)
        x, padding_mask = strip_prompts(x, padding_mask, state)
        return self.norm(x), padding_mask

    def pool(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cell embedding from the final-norm outputs (``tokens``: the input bins, needed by
        ``mean_expressed``; a cell without an expressed gene gets zeros)."""
        if self.stem is not None:
            return self.stem(hidden)
        genes = hidden[:, : self.n_genes]
        keep = ~padding_mask[:, : self.n_genes]
        if self.pooling == "mean_expressed":
            if tokens is None:
                raise ValueError("pooling 'mean_expressed' needs the input tokens")
            keep = keep & (tokens[:, : self.n_genes] > 0)
        w = keep.unsqueeze(-1).to(hidden.dtype)
        return (genes * w).sum(1) / w.sum(1).clamp(min=1.0)

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        tokens = batch["tokens"]
        hidden, mask = self.encode(tokens, batch.get("padding_mask"))
        return EncoderOutput(
            cell=self.pool(hidden, mask, tokens), tokens=hidden, padding_mask=mask
        )

    def lm_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pretraining logits over the 7 tokens (for checks against other implementations)."""
        return self.to_out(self.encode(tokens)[0])
