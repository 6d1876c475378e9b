"""Options of the cell_type task."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sctune.core.config import PluginConfig
from sctune.core.preprocess import EMBEDDING_METRIC_CELLS


class CellTypeConfig(PluginConfig):
    head_layers: int = Field(
        3, ge=1, le=6, description="layers of scGPT's ClsDecoder head (n_layers_cls)"
    )
    input_norm: Literal["none", "batch"] = Field(
        "none",
        description="batch: BatchNorm1d on the cell embedding before the head (standardises each "
        "dimension; helps randomly initialised backbones; adds 2*hidden parameters)",
    )
    class_weights: Literal["none", "scpeft", "balanced"] = Field(
        "none",
        description="loss weights from TRAINING counts: scpeft (1 - n_c/N)^2, balanced N/(C n_c)",
    )
    sampler: Literal["shuffle", "weighted"] = Field(
        "shuffle", description="weighted: sample training cells with probability 1/n_c"
    )
    min_class_cells: int = Field(
        10, ge=1, description="warn about classes with fewer training cells than this"
    )
    knn_k: int = Field(10, ge=1, description="zero_shot: neighbours for kNN label transfer")
    umap: bool = Field(True, description="draw the UMAP of test-cell embeddings")
    scib_silhouette: bool = Field(
        False, description="also report the scib-style (s+1)/2 silhouette"
    )
    embedding_metric_cells: int | None = Field(
        EMBEDDING_METRIC_CELLS,
        ge=10,
        description="the silhouette and the UMAP look at a fixed random sample of at most this "
        "many test cells (they grow with the square of the cells); null = every test cell",
    )
