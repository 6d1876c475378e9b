"""Plots: row-normalised confusion matrix and a UMAP of test-cell embeddings (matplotlib, scanpy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_png(cm: np.ndarray, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if cm[i, j] >= 0.05:
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > 0.6 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def umap_png(
    embeddings: np.ndarray, true: list[str], pred: list[str], path: Path, seed: int = 0
) -> None:
    """UMAP (scanpy: neighbors on the embedding, umap min_dist 0.3), coloured by true and predicted."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    adata = ad.AnnData(X=np.zeros((len(true), 1), dtype=np.float32))
    adata.obsm["X_emb"] = embeddings.astype(np.float32)
    cats = sorted(set(true) | set(pred))
    import pandas as pd

    adata.obs["true"] = pd.Categorical(true, categories=cats)
    adata.obs["predicted"] = pd.Categorical(pred, categories=cats)
    sc.pp.neighbors(adata, use_rep="X_emb", n_neighbors=min(15, len(true) - 1), random_state=seed)
    sc.tl.umap(adata, min_dist=0.3, random_state=seed)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    sc.pl.umap(
        adata, color="true", ax=axes[0], show=False, title="true cell type", legend_loc=None
    )
    sc.pl.umap(adata, color="predicted", ax=axes[1], show=False, title="predicted cell type")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
