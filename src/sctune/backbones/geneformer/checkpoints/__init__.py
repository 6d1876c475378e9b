"""Checkpoints shipped inside sctune for the Geneformer backbone, named ``builtin:<name>``.

Each is a folder in Geneformer's real format (a ``BertForMaskedLM`` config.json +
model.safetensors) with the token and gene-median dictionaries it was trained with, plus
``backbone.yaml``, ``pretraining_cells.json`` and a NOTICE; see :mod:`sctune.core.shipped`.
They are sctune's own small self-pretrained models, not Geneformer's published weights.
"""

from __future__ import annotations

from pathlib import Path

from sctune.core.shipped import Shipped

HERE = Path(__file__).resolve().parent
BUILTIN: dict[str, str] = {
    # 128 dims x 4 layers, mean pooling, masked-token objective + GEPC; the same 6,512 PBMCs and
    # split as scGPT's builtin:pbmc_small; its own 764-token dictionary and medians.
    "pbmc_small": "pbmc_small",
}
SHIPPED = Shipped(
    HERE,
    BUILTIN,
    path_keys=("checkpoint", "token_dictionary", "gene_median_dictionary", "gene_name_id_dict"),
    fmt="a Geneformer model folder (config.json, model.safetensors) with its dictionaries",
    fixed=("token_dictionary", "gene_median_dictionary"),
)
