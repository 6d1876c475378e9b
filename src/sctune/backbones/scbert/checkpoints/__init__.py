"""Checkpoints shipped inside sctune for the scBERT backbone, named ``builtin:<name>``.

Each is a folder in scBERT's real layout (a ``.pth`` with ``model_state_dict``, the gene order,
the gene2vec table) plus ``backbone.yaml``, ``pretraining_cells.json`` and a NOTICE; see
:mod:`sctune.core.shipped`. They are sctune's own small self-pretrained models, not scBERT's
published weights.
"""

from __future__ import annotations

from pathlib import Path

from sctune.core.shipped import Shipped

HERE = Path(__file__).resolve().parent
BUILTIN: dict[str, str] = {
    # 64 dims x 4 Performer layers, mean pooling, masked-bin objective with mask_unexpressed 0.02;
    # the same 6,512 PBMCs and split as scGPT's builtin:pbmc_small (762 genes of pbmc68k_reduced).
    "pbmc_small": "pbmc_small",
}
SHIPPED = Shipped(
    HERE,
    BUILTIN,
    path_keys=("checkpoint", "gene_order"),
    fmt="a scBERT .pth file (with gene_order)",
    fixed=("gene_order", "dim", "depth", "heads", "dim_head"),
)
