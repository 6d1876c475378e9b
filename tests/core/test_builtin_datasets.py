"""Built-in datasets: scanpy's pbmc68k_reduced, and its counts rebuilt from .raw."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sctune.core.data import detect_kind, read_adata


def test_pbmc68k_reduced_counts_are_integers_with_the_full_library() -> None:
    adata = read_adata("scanpy:pbmc68k_reduced_counts")
    assert adata.shape == (700, 765) and adata.raw is None
    assert detect_kind(adata.X) == "counts" and adata.X.dtype == np.int32
    assert adata.X.nnz == 174_400 and adata.X.data.min() >= 1
    rows = np.asarray(adata.X.sum(axis=1)).ravel()
    assert (rows <= adata.obs["n_counts"].to_numpy()).all()  # 765 HVGs of the full library
    assert adata.obs["cell_type"].nunique() == 10


def test_pbmc68k_reduced_counts_equal_the_real_counts(shared_data: Path) -> None:
    import anndata as ad

    real = ad.read_h5ad(shared_data / "pbmc68k_reduced_counts.h5ad")
    rebuilt = read_adata("scanpy:pbmc68k_reduced_counts")
    assert list(rebuilt.obs_names) == list(real.obs_names)
    assert list(rebuilt.var_names) == list(real.var_names)
    assert (rebuilt.X != real.X).nnz == 0
    assert (rebuilt.obs["cell_type"].to_numpy() == real.obs["cell_type"].to_numpy()).all()
