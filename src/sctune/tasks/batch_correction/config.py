"""Options of the batch_correction task (defaults: scGPT's integration objectives, as in scPEFT)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sctune.core.config import PluginConfig
from sctune.core.preprocess import EMBEDDING_METRIC_CELLS


class BatchCorrectionConfig(PluginConfig):
    batch_column: str = Field(
        "batch", description="adata.obs column naming each cell's batch (at least 2 batches)"
    )
    gep: bool = Field(
        True,
        description="GEP: mask a fraction of each cell's input tokens and predict them from the "
        "encoder's per-token outputs with the backbone's own masked objective (scGPT: masked "
        "expression values, MSE; Geneformer: masked rank tokens, cross-entropy; scBERT: masked "
        "expression bins, cross-entropy)",
    )
    gep_weight: float = Field(1.0, ge=0, description="weight of the GEP term")
    per_batch_sampling: bool = Field(
        False,
        description="every training minibatch holds cells of one batch (scPEFT's per-batch "
        "sampling); replaces length bucketing",
    )
    mask_ratio: float = Field(
        0.4, gt=0, lt=1, description="fraction of each cell's tokens masked for GEP (scPEFT: 0.4)"
    )
    gepc: bool = Field(
        True,
        description="GEPC-style objective: reconstruct each cell's log-normalised expression of "
        "the training HVGs from its cell embedding (MLP decoder, MSE); needs the expression "
        "matrix from the engine (see docs)",
    )
    gepc_weight: float = Field(1.0, ge=0, description="weight of the GEPC term")
    n_hvg: int = Field(
        1200,
        ge=1,
        description="HVGs for GEPC and the PCA/Harmony references, chosen on TRAINING cells by "
        "variance of log-normalised expression (scPEFT: 1200; capped by the gene count)",
    )
    ecs: bool = Field(True, description="elastic cell similarity on the L2-normalised embeddings")
    ecs_weight: float = Field(10.0, ge=0, description="weight of the ECS term (scGPT: 10)")
    ecs_threshold: float = Field(
        0.8, ge=0, le=1, description="ECS cosine threshold (scGPT/scPEFT: 0.8)"
    )
    dar: bool = Field(
        True,
        description="domain-adversarial batch discrimination through a gradient reversal layer",
    )
    dar_weight: float = Field(1.0, ge=0, description="weight of the DAR term (scGPT dab_weight)")
    grl_lambda: float = Field(
        1.0, ge=0, description="scale of the reversed gradient reaching the embedding"
    )
    discriminator_layers: int = Field(
        3, ge=1, le=6, description="layers of the batch discriminator (scGPT: 3)"
    )
    dsbn: bool = Field(
        False,
        description="domain-specific batch norm (scGPT's DSBN): the summed token embeddings "
        "entering the first block (the TOKEN_STREAM insertion point, after any adapter there; "
        "on scGPT gene + value embeddings, as in scGPT) go through one "
        "BatchNorm1d per training batch, chosen per cell; statistics over non-padding tokens; "
        "cells of batches without training cells use the average of the training batches' norms",
    )
    references: list[Literal["pca", "harmony"]] = Field(
        default_factory=lambda: ["pca", "harmony"],
        description="reference embeddings scored on the same test cells: uncorrected PCA of "
        "log-normalised HVGs, and Harmony (harmonypy) on that PCA",
    )
    n_pcs: int = Field(50, ge=2, description="PCA components of the references")
    kbet: bool = Field(
        True, description="compute kBET (the slowest metric; the first call compiles JAX code)"
    )
    umap: bool = Field(True, description="draw UMAPs by batch and cell type for each embedding")
    embedding_metric_cells: int | None = Field(
        EMBEDDING_METRIC_CELLS,
        ge=10,
        description="the integration metrics (scib), the PCA/Harmony references and the UMAPs look at a fixed random sample of at most this "
        "many test cells (they grow with the square of the cells); null = every test cell",
    )
