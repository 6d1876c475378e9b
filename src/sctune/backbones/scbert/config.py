"""Recipe options of the scBERT backbone."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from sctune.backbones.scbert.checkpoints import SHIPPED
from sctune.core.shipped import Shipped, ShippedCheckpointConfig


class ScBERTConfig(ShippedCheckpointConfig):
    """Options of ``backbone: {name: scbert, ...}``.

    With no ``checkpoint`` the model is randomly initialised; ``resolve`` then writes the gene
    order (the data's genes), a seeded gene2vec and a seeded checkpoint into the run directory so
    that ``sctune predict`` rebuilds the same model.
    """

    shipped: ClassVar[Shipped] = SHIPPED

    checkpoint: Path | None = Field(
        None,
        description="scBERT .pth file (dict with 'model_state_dict', e.g. panglao_pretrained.pth);"
        " 'builtin:pbmc_small' = sctune's own small checkpoint (fills in its gene order and sizes"
        " where unset); null: random initialisation",
    )
    gene2vec: Path | None = Field(
        None,
        description=".npy array [n_genes, dim] that fills the frozen position table "
        "(gene2vec_16906.npy); overrides the checkpoint's table when given",
    )
    gene_order: Path | None = Field(
        None,
        description="text file, one gene symbol per line, in the pretraining order (the 16,906 "
        "var_names of panglao_10000.h5ad); required with a checkpoint",
    )
    dim: int = Field(200, ge=1, description="model width")
    depth: int = Field(6, ge=1, description="number of Performer layers")
    heads: int = Field(10, ge=1, description="attention heads")
    dim_head: int = Field(64, ge=2, description="width of one attention head")
    nb_features: int | None = Field(
        None, ge=1, description="FAVOR+ random features; null: int(dim_head * ln(dim_head))"
    )
    pooling: Literal["scbert", "mean", "mean_expressed"] = Field(
        "scbert",
        description="cell embedding: 'scbert' = fresh conv1+fc1 stem of scBERT's head "
        "(stem_hidden wide, trained with the head); 'mean' = mean over gene positions (dim wide); "
        "'mean_expressed' = mean over the genes the cell expresses (bin > 0), without the "
        "unexpressed genes that are most of every cell's positions",
    )
    mask_unexpressed: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="pretraining objective: also mask this fraction of each cell's UNEXPRESSED "
        "genes (target bin 0), so the model must also say which genes a cell expresses, not only "
        "at which level; 0 = scBERT's own objective (expressed genes only)",
    )
    stem_hidden: int = Field(512, ge=1, description="width of the stem's fc1 (scBERT: 512)")
    stem_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after the stem's fc1")
    min_gene_match: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="refuse data when fewer than this fraction of its genes are in the gene order",
    )
    min_genes: int = Field(
        0,
        ge=0,
        description="warn about cells with fewer expressed genes (scBERT dropped cells below 200;"
        " sctune keeps them so splits stay intact)",
    )
    init_seed: int = Field(
        0, description="seed of the random weights written by resolve when there is no checkpoint"
    )
