"""Tiny scBERT fixtures: real file formats (``.pth``, gene2vec, gene order), random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from sctune.backbones.scbert.config import ScBERTConfig
from sctune.backbones.scbert.plugin import ScBERTBackbone
from sctune.core.cells import Expression

GENES = [
    "CD3E", "CD3D", "CD4", "CD8A", "MS4A1", "CD19", "CD14", "LYZ", "FCGR3A", "NKG7",
    "GNLY", "PPBP", "HBB", "IL7R", "CCR7", "S100A8", "S100A9", "FCER1A", "CST3", "GAPDH",
]  # fmt: skip


@pytest.fixture
def backbone() -> ScBERTBackbone:
    return ScBERTBackbone()


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, object]:
    """Options of a tiny model (dim 16, 2 heads x 8, depth 2, 20 genes) with files on disk."""
    return ScBERTBackbone.example_config(tmp_path / "tiny", GENES)


@pytest.fixture
def tiny_config(tiny: dict[str, object]) -> ScBERTConfig:
    return ScBERTConfig(**tiny)


def make_expression(
    X: np.ndarray, genes: list[str], kind: str = "counts", **kwargs: object
) -> Expression:
    X = np.asarray(X, dtype=np.float32)
    return Expression(
        X=sparse.csr_matrix(X),
        genes=tuple(genes),
        kind=kind,  # type: ignore[arg-type]
        library_size=X.sum(axis=1) if kind == "counts" else None,
        cell_ids=tuple(f"c{i}" for i in range(X.shape[0])),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def counts() -> Expression:
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0, size=(6, len(GENES))) * (rng.random((6, len(GENES))) < 0.6)
    return make_expression(X, GENES)


@pytest.fixture
def expression():
    """Factory: ``expression(X, genes, kind="counts", **extra)`` -> :class:`Expression`."""
    return make_expression


@pytest.fixture
def genes() -> list[str]:
    return list(GENES)
