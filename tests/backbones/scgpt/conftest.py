"""Fixtures for the scGPT backbone tests: tiny vocabularies, checkpoints and the reference model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import sparse

from sctune import testing
from sctune.core.cells import Expression

GENES = [
    "CD3E",
    "CD3D",
    "CD4",
    "CD8A",
    "CD8B",
    "MS4A1",
    "CD79A",
    "CD79B",
    "CD14",
    "LYZ",
    "FCGR3A",
    "NKG7",
    "GNLY",
    "PPBP",
    "PF4",
    "HBB",
    "IL7R",
    "CCR7",
    "S100A8",
    "S100A9",
    "FCER1A",
    "CST3",
    "GZMB",
    "GZMK",
    "KLRD1",
    "SELL",
    "LEF1",
    "TCF7",
    "FOXP3",
    "IL2RA",
    "CD19",
    "PAX5",
    "CD68",
    "CSF1R",
    "ITGAX",
    "CLEC4C",
    "IRF7",
    "IRF8",
    "MKI67",
    "TOP2A",
    "ACTB",
    "GAPDH",
    "B2M",
    "MALAT1",
    "RPL13",
    "RPS27",
    "EEF1A1",
    "TMSB4X",
    "FTL",
    "FTH1",
]
TINY_ARGS = {
    "embsize": 32,
    "nheads": 4,
    "d_hid": 64,
    "nlayers": 2,
    "n_layers_cls": 3,
    "dropout": 0.0,
    "pad_token": "<pad>",
    "pad_value": -2,
}


def tiny_vocab() -> dict[str, int]:
    vocab = {g: i for i, g in enumerate(GENES)}
    for tok in ("<pad>", "<cls>", "<eoc>"):
        vocab[tok] = len(vocab)
    return vocab


def make_expression(n_cells=40, genes=GENES, kind="counts", seed=0, density=0.5, **kw):
    rng = np.random.default_rng(seed)
    X = sparse.random(
        n_cells,
        len(genes),
        density=density,
        format="csr",
        random_state=seed,
        data_rvs=lambda n: rng.integers(1, 30, n).astype(np.float32),
    )
    X = X.astype(np.float32)
    if kind == "lognorm":
        X.data = np.log1p(X.data * 1.37).astype(np.float32)
    if kind == "scaled":
        X.data -= 3.0
    return Expression(
        X=X,
        genes=tuple(genes),
        kind=kind,
        library_size=None,
        cell_ids=tuple(f"c{i}" for i in range(n_cells)),
        **kw,
    )


@pytest.fixture
def vocab():
    return tiny_vocab()


@pytest.fixture
def reference_cls():
    """scGPT 0.2.4's TransformerModel, imported without running the package __init__."""
    cls = testing.reference_scgpt_class()
    if cls is None:
        pytest.skip("scgpt not installed (pip install --no-deps scgpt==0.2.4)")
    return cls


def padded_batch(vocab, lengths=(12, 7, 3, 20), seed=0):
    """A collated-style batch: <cls> first, random genes and bins, <pad>/-2 padding."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), vocab["<pad>"], dtype=torch.long)
    values = torch.full((len(lengths), width), -2.0)
    genes = torch.tensor([vocab[x] for x in GENES])
    for r, n in enumerate(lengths):
        ids[r, 0] = vocab["<cls>"]
        values[r, 0] = 0.0
        pick = torch.randperm(len(GENES), generator=g)[: n - 1]
        ids[r, 1:n] = genes[pick]
        values[r, 1:n] = torch.randint(1, 51, (n - 1,), generator=g).float()
    return {"gene_ids": ids, "values": values, "padding_mask": ids == vocab["<pad>"]}


@pytest.fixture
def h():
    """Helpers shared by the scGPT tests (fixtures, so no test imports conftest by name)."""
    return SimpleNamespace(
        GENES=GENES,
        TINY_ARGS=TINY_ARGS,
        tiny_vocab=tiny_vocab,
        make_expression=make_expression,
        padded_batch=padded_batch,
    )
