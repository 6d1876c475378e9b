"""scBERT tokenizer and plugin plumbing: levels, reindexing, namespaces, resolve, registration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sctune.backbones.scbert.config import ScBERTConfig
from sctune.backbones.scbert.plugin import ScBERTBackbone, sctune_register_backbones
from sctune.core.errors import CheckpointError, DataError


def _expected_levels(X: np.ndarray, data_genes: list[str], order: list[str]) -> np.ndarray:
    """Straightforward dense reference: reindex, scale to 1e4, log2(1+x), floor, cap at 5."""
    col = {g: i for i, g in enumerate(data_genes)}
    R = np.stack([X[:, col[g]] if g in col else np.zeros(len(X)) for g in order], axis=1).astype(
        np.float64
    )
    R = R / R.sum(1, keepdims=True) * 1e4
    levels = np.minimum(np.floor(np.log2(1 + R)), 5)
    return np.concatenate([levels, np.zeros((len(X), 1))], axis=1)


def test_counts_levels_reindexed(backbone, tiny_config, expression, genes) -> None:
    rng = np.random.default_rng(1)
    data_genes = ["NOTAGENE", *genes[5:][::-1]]  # permuted, 5 order genes absent, 1 unknown
    X = rng.poisson(2.0, size=(7, len(data_genes))) * (rng.random((7, len(data_genes))) < 0.5)
    X[:, 1] = rng.integers(1, 3, size=7)  # every cell has counts on matched genes
    X[0, 2] = 5000  # a large value: level capped at 5
    cells = backbone.tokenize(expression(X, data_genes), tiny_config, seed=0)
    tokens = np.stack([cells[i]["tokens"] for i in range(len(cells))])
    assert tokens.dtype == np.uint8 and tokens.shape == (7, 21)
    np.testing.assert_array_equal(tokens, _expected_levels(X, data_genes, genes))
    assert tokens[:, :5].max() == 0 and tokens[:, -1].max() == 0 and tokens.max() == 5
    match = cells.gene_match
    assert (match.n_genes, match.n_matched, match.vocabulary_size) == (16, 15, 20)
    assert "'NOTAGENE'" in match.summary()
    batch = cells.collate([cells[0], cells[1]])
    assert batch["tokens"].dtype == torch.long and batch["tokens"].shape == (2, 21)
    assert not batch["padding_mask"].any()
    out = backbone.build(tiny_config)(batch)
    assert out.cell.shape == (2, 32)


def test_lognorm_converted_with_warning(backbone, tiny_config, expression, genes) -> None:
    X = np.array([[1.0, 3, 0, 7, 40] + [2] * 15, [0, 0, 1, 1, 1] + [0] * 15])
    counts = backbone.tokenize(expression(X, genes), tiny_config, seed=0)
    norm = X / X.sum(1, keepdims=True) * 1e4
    with pytest.warns(UserWarning, match="log-normalised"):
        lognorm = backbone.tokenize(
            expression(np.log1p(norm), genes, "lognorm"), tiny_config, seed=0
        )
    np.testing.assert_array_equal(lognorm.fields["tokens"], counts.fields["tokens"])


def test_scaled_refused(backbone, tiny_config, expression, genes) -> None:
    X = np.random.default_rng(0).normal(size=(3, 20))
    with pytest.raises(DataError, match="negative values"):
        backbone.tokenize(expression(X, genes, "scaled"), tiny_config, seed=0)


def test_ensembl_ids_explained_or_mapped_via_symbols(
    backbone, tiny_config, expression, genes
) -> None:
    ens = [f"ENSG{i:011d}" for i in range(20)]
    X = np.ones((2, 20))
    with pytest.raises(DataError, match="look like Ensembl ids") as err:
        backbone.tokenize(expression(X, ens), tiny_config, seed=0)
    assert "data.gene_column" in (err.value.hint or "")
    cells = backbone.tokenize(expression(X, ens, gene_symbols=tuple(genes)), tiny_config, seed=0)
    assert cells.gene_match.n_matched == 20 and "symbol column" in cells.gene_match.via


def test_min_gene_match_and_min_genes(backbone, tiny, expression, genes) -> None:
    X = np.ones((2, 20))
    data_genes = genes[:2] + [f"X{i}" for i in range(18)]
    with pytest.raises(DataError, match="'min_gene_match' is 0.5"):
        backbone.tokenize(
            expression(X, data_genes), ScBERTConfig(**tiny, min_gene_match=0.5), seed=0
        )
    with pytest.warns(UserWarning, match="fewer than 5 expressed genes"):
        cells = backbone.tokenize(
            expression(X, data_genes), ScBERTConfig(**tiny, min_genes=5), seed=0
        )
    assert len(cells) == 2  # warned, not dropped


def test_gene_match_reports_positions(backbone, tiny_config, genes) -> None:
    match = backbone.gene_match(genes[:10] + ["FOO"], tiny_config)
    assert match.n_matched == 10 and match.n_genes == 11
    assert "10 of the 20 gene-order positions" in match.notes[0]


def test_resolve_random_init_is_reproducible(backbone, genes, expression, tmp_path) -> None:
    cfg = ScBERTConfig(dim=16, depth=2, heads=2, dim_head=8, stem_hidden=8)
    resolved = backbone.resolve(cfg, genes=genes[:12], run_dir=tmp_path / "run")
    assert Path(resolved.gene_order).read_text().split() == genes[:12]
    assert np.load(resolved.gene2vec).shape == (12, 16)
    assert backbone.resolve(resolved, genes=genes, run_dir=tmp_path / "other") == resolved
    X = np.arange(24, dtype=float).reshape(2, 12)
    cells = backbone.tokenize(expression(X, genes[:12]), resolved, seed=0)
    batch = cells.collate([cells[0], cells[1]])
    a, b = (backbone.build(resolved).eval() for _ in range(2))
    with torch.no_grad():
        torch.testing.assert_close(a(batch).tokens, b(batch).tokens)


def test_resolve_needs_gene_order_with_checkpoint(backbone, tiny) -> None:
    cfg = ScBERTConfig(checkpoint=tiny["checkpoint"], dim=16, depth=2, heads=2, dim_head=8)
    with pytest.raises(CheckpointError, match="needs the gene order"):
        backbone.resolve(cfg, genes=["A"], run_dir=Path("."))


def test_registered_and_cheap_to_import() -> None:
    assert sctune_register_backbones() == [ScBERTBackbone]
    assert ScBERTBackbone.name == "scbert"
    code = (
        "import sys, sctune.backbones.scbert.plugin as p; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(p.ScBERTBackbone.name)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "scbert"


def test_example_config_is_tiny(tmp_path, genes) -> None:
    opts = ScBERTBackbone.example_config(tmp_path, genes)
    cfg = ScBERTConfig(**opts)
    assert (cfg.dim, cfg.heads, cfg.dim_head, cfg.depth) == (16, 2, 8, 2)
    model = ScBERTBackbone().build(cfg)
    assert model.n_genes == 20
    assert sum(p.numel() for p in model.parameters()) < 50_000


def test_real_counts_end_to_end(backbone, tmp_path) -> None:
    anndata = pytest.importorskip("anndata")
    from scipy import sparse

    from sctune.core.cells import Expression

    repo_root = Path(__file__).resolve().parents[3]
    path = repo_root.parent / "shared" / "data" / "pbmc68k_reduced_counts.h5ad"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    adata = anndata.read_h5ad(path)
    expr = Expression(
        X=sparse.csr_matrix(adata.X, dtype=np.float32),
        genes=tuple(adata.var_names),
        kind="counts",
        library_size=None,
        cell_ids=tuple(adata.obs_names),
    )
    cfg = ScBERTConfig(dim=16, depth=1, heads=2, dim_head=8, stem_hidden=8)
    resolved = backbone.resolve(cfg, genes=expr.genes, run_dir=tmp_path)
    cells = backbone.tokenize(expr, resolved, seed=0)
    tokens = cells.fields["tokens"]
    assert tokens.shape == (adata.n_obs, adata.n_vars + 1)
    nonzero = np.asarray((adata.X > 0).sum(1)).ravel()
    np.testing.assert_array_equal((tokens > 0).sum(1), nonzero)  # log2(1 + x) >= 1 for x >= 1
    with torch.no_grad():
        out = backbone.build(resolved).eval()(cells.collate([cells[i] for i in range(4)]))
    assert out.cell.shape == (4, 8) and torch.isfinite(out.cell).all()
