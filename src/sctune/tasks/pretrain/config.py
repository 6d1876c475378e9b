"""Options of the pretrain task."""

from __future__ import annotations

from pydantic import Field

from sctune.core.config import PluginConfig
from sctune.core.preprocess import EMBEDDING_METRIC_CELLS


class PretrainConfig(PluginConfig):
    mask_ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="fraction of each cell's eligible tokens masked; null: the backbone's own "
        "pretraining ratio (scGPT 0.4, Geneformer 0.15, scBERT 0.15)",
    )
    gepc: bool = Field(
        False,
        description="also reconstruct each cell's log-normalised expression of the training "
        "HVGs from its CELL embedding (an MLP decoder, MSE; the GEPC/MVC idea as a task head). "
        "The masked objective alone never trains the cell embedding (scGPT's <cls> output, a "
        "pooler); this does. The decoder is part of the run, not of the exported checkpoint",
    )
    gepc_weight: float = Field(1.0, ge=0, description="weight of the GEPC term")
    n_hvg: int = Field(
        1200,
        ge=1,
        description="GEPC: highly variable genes reconstructed, chosen on TRAINING cells by "
        "variance of log-normalised expression (capped by the gene count)",
    )
    export: bool = Field(
        True,
        description="write the trained backbone in its real checkpoint format into "
        "<run>/pretrained (method 'full', or adapters that fold into the weights such as LoRA)",
    )
    probe: bool = Field(
        True,
        description="when the data has cell-type labels: score the frozen test embedding with a "
        "kNN and a logistic-regression probe (5-fold cross-validation on the test cells)",
    )
    embedding_metric_cells: int | None = Field(
        EMBEDDING_METRIC_CELLS,
        ge=10,
        description="the probes look at a fixed random sample of at most this many test cells; "
        "null = every test cell",
    )
