"""UMAPs of each embedding of the test cells, coloured by batch and by cell type (scanpy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def umap_grid(
    embeddings: dict[str, np.ndarray],
    batch: np.ndarray,
    labels: np.ndarray | None,
    path: Path,
    seed: int = 0,
) -> None:
    """One row per embedding: UMAP by batch, and by cell type when labels are given."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scanpy as sc

    cols = 2 if labels is not None else 1
    fig, axes = plt.subplots(
        len(embeddings), cols, figsize=(6 * cols, 4.5 * len(embeddings)), squeeze=False
    )
    for row, (name, X) in enumerate(embeddings.items()):
        adata = ad.AnnData(X=np.zeros((len(X), 1), dtype=np.float32))
        adata.obsm["X_emb"] = np.asarray(X, dtype=np.float32)
        adata.obs["batch"] = pd.Categorical(np.asarray(batch).astype(str))
        if labels is not None:
            adata.obs["cell type"] = pd.Categorical(np.asarray(labels).astype(str))
        sc.pp.neighbors(
            adata, use_rep="X_emb", n_neighbors=max(2, min(15, len(X) - 1)), random_state=seed
        )
        sc.tl.umap(adata, min_dist=0.3, random_state=seed)
        sc.pl.umap(adata, color="batch", ax=axes[row, 0], show=False, title=f"{name}: batch")
        if labels is not None:
            sc.pl.umap(
                adata, color="cell type", ax=axes[row, 1], show=False, title=f"{name}: cell type"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
