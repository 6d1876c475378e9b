"""Recipe options of the ``scgpt`` backbone."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from sctune.backbones.scgpt.checkpoints import SHIPPED
from sctune.core.shipped import Shipped, ShippedCheckpointConfig

ARCH_FIELDS = ("embsize", "nheads", "d_hid", "nlayers")


class ScGPTConfig(ShippedCheckpointConfig):
    """Options of the scGPT backbone (``backbone:`` block of a recipe)."""

    shipped: ClassVar[Shipped] = SHIPPED

    checkpoint: Path | None = Field(
        default=None,
        description=(
            "scGPT checkpoint folder with 'args.json', 'vocab.json' and 'best_model.pt' "
            "(e.g. scGPT_human); 'builtin:pbmc_small' = sctune's own small checkpoint "
            "self-pretrained on 6,512 PBMCs over the quickstart's 765 genes (shipped in the "
            "package); unset = random initialisation"
        ),
    )
    vocab: Path | None = Field(
        default=None,
        description=(
            "vocab.json (gene symbol -> id) for a randomly initialised model; unset = built from "
            "the data's genes into the run folder. Not allowed with 'checkpoint', whose own "
            "vocab.json is always used"
        ),
    )
    embsize: int = Field(
        default=512,
        gt=0,
        description="hidden size; random init only (a checkpoint's args.json decides otherwise)",
    )
    nheads: int = Field(default=8, gt=0, description="attention heads; random init only")
    d_hid: int = Field(default=512, gt=0, description="feed-forward width; random init only")
    nlayers: int = Field(default=12, gt=0, description="encoder layers; random init only")
    dropout: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="dropout on the value embedding, attention output and FFN (scGPT: 0.2)",
    )
    attention_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "dropout on the attention probabilities (scGPT pretraining: 0.2). Any value > 0 "
            "forces the slow O(L^2)-memory attention kernel on CPU; 0 is sctune's default"
        ),
    )
    max_seq_len: int = Field(
        default=2001,
        ge=2,
        description="tokens per cell incl. <cls>; cells with more expressed genes keep a seeded "
        "random subset (scPEFT: 2001, scGPT pretraining: 1200)",
    )
    n_bins: int = Field(
        default=51,
        ge=3,
        description="expression bins incl. the zero bin (scGPT: 51); value_style 'binned' only",
    )
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description="cell embedding: cls = the <cls> token's output (scGPT's default "
        "cell_emb_style); mean = the mean over the gene tokens' outputs (scGPT's 'avg-pool', "
        "here without <cls> and padding). A checkpoint trained with masked expression "
        "prediction alone never trained <cls>: mean then gives the more informative frozen "
        "embedding",
    )
    value_style: Literal["binned", "log1p"] = Field(
        default="binned",
        description=(
            "what the value of an expressed gene is. binned: its per-cell quantile bin "
            "1..n_bins-1 (scGPT's input_style 'binned', as scGPT_human was pretrained). log1p: "
            "the normalised log1p value itself (scGPT's input_style 'log1p'); the continuous "
            "value encoder takes it unchanged, and masked-expression prediction (GEP) then "
            "regresses log1p values instead of per-cell bins, whose random tie-breaking turns "
            "most targets of low-count 10x data into noise. Must match the checkpoint: one "
            "made with log1p values and loaded with binned (or the reverse) sees values on a "
            "scale it was not trained on (bins run to n_bins-1, log1p values to about 10); "
            "tokenising warns when args.json records another input_style. Exported "
            "checkpoints record it as input_style"
        ),
    )
    min_gene_match: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="refuse data where fewer than this fraction of genes is in the vocabulary",
    )

    @model_validator(mode="after")
    def _check(self) -> ScGPTConfig:
        if self.checkpoint is not None and self.vocab is not None:
            raise ValueError(
                "set either 'checkpoint' or 'vocab', not both: a checkpoint always uses its own "
                "vocab.json"
            )
        if self.embsize % self.nheads:
            raise ValueError(
                f"'embsize' ({self.embsize}) must be divisible by 'nheads' ({self.nheads})"
            )
        return self

    def explicit_arch(self) -> dict[str, int]:
        """Architecture values the recipe set explicitly (checked against args.json)."""
        return {k: getattr(self, k) for k in ARCH_FIELDS if k in self.model_fields_set}
