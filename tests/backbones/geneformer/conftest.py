"""Fixtures for the Geneformer backbone tests: tiny checkpoints and dictionaries (tmp files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from sctune.backbones.geneformer.config import GeneformerConfig
from sctune.backbones.geneformer.plugin import GeneformerBackbone
from sctune.backbones.geneformer.resolve import write_example
from sctune.core.cells import Expression

GENES = [
    "CD3E",
    "CD3D",
    "CD8A",
    "CD4",
    "MS4A1",
    "CD19",
    "CD79A",
    "NKG7",
    "GNLY",
    "LYZ",
    "CD14",
    "FCGR3A",
    "PPBP",
    "IL7R",
    "CCR7",
    "S100A8",
    "S100A9",
    "HLA-DRA",
    "CST3",
    "FCER1A",
    "GZMB",
    "PRF1",
    "KLRD1",
    "TRAC",
    "LTB",
    "MALAT1",
    "ACTB",
    "B2M",
    "TMSB4X",
    "FTL",
]

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_v1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return write_example(tmp_path_factory.mktemp("gf_v1"), GENES, version="v1")


@pytest.fixture(scope="session")
def tiny_v2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return write_example(tmp_path_factory.mktemp("gf_v2"), GENES, version="v2")


@pytest.fixture
def backbone() -> GeneformerBackbone:
    return GeneformerBackbone()


def _make_expression(
    X: np.ndarray,
    genes: list[str] | tuple[str, ...],
    *,
    kind: str = "counts",
    library_size: np.ndarray | None = None,
    gene_ids: tuple[str, ...] | None = None,
) -> Expression:
    X = sparse.csr_matrix(np.asarray(X, dtype=np.float32))
    if library_size is None and kind == "counts":
        library_size = np.asarray(X.sum(axis=1)).reshape(-1)
    return Expression(
        X=X,
        genes=tuple(genes),
        kind=kind,  # type: ignore[arg-type]
        library_size=library_size,
        cell_ids=tuple(f"c{i}" for i in range(X.shape[0])),
        gene_ids=gene_ids,
    )


def _random_counts(n_cells: int, n_genes: int, seed: int = 0, density: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.poisson(3.0, size=(n_cells, n_genes)).astype(np.float32)
    X[rng.random((n_cells, n_genes)) > density] = 0
    X[:, 0] += 1  # no empty cells
    return X


@pytest.fixture
def make_expr():
    """``make_expr(X, genes, kind=..., library_size=..., gene_ids=...) -> Expression``."""
    return _make_expression


@pytest.fixture
def random_counts():
    """``random_counts(n_cells, n_genes, seed=0, density=0.5) -> ndarray`` (no empty cells)."""
    return _random_counts


@pytest.fixture
def make_config():
    """``make_config(options, **extra) -> GeneformerConfig``."""

    def make(options: dict[str, object], **extra: object) -> GeneformerConfig:
        return GeneformerConfig(**{**options, **extra})

    return make


@pytest.fixture
def genes() -> list[str]:
    return list(GENES)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("shared data folder ../shared/data is absent")
    return SHARED_DATA
