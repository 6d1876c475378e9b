"""Options of the pretrain task."""

from __future__ import annotations

from pydantic import Field

from sctune.core.config import PluginConfig


class PretrainConfig(PluginConfig):
    mask_ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="fraction of each cell's eligible tokens masked; null: the backbone's own "
        "pretraining ratio (scGPT 0.4, Geneformer 0.15, scBERT 0.15)",
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
