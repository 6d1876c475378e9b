"""Geneformer component: registration, resolve, example config, checks, real dictionaries."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import sparse

from sctune.backbones.geneformer import plugin
from sctune.backbones.geneformer.config import GeneformerConfig
from sctune.core.capabilities import INSERTION_POINTS, Capability
from sctune.core.cells import Expression


def test_registration_and_cheap_import():
    assert plugin.sctune_register_backbones() == [plugin.GeneformerBackbone]
    assert plugin.GeneformerBackbone.provides == frozenset(Capability)
    code = (
        "import sys, sctune.backbones.geneformer.plugin; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_surface_notes(tiny_v1, backbone, make_config):
    surfaces = backbone.surfaces(backbone.build(make_config(tiny_v1)))
    assert set(surfaces.notes) == {c.value for c in INSERTION_POINTS}
    assert surfaces.hidden_size == 32 and len(surfaces.blocks) == 2
    assert "position 1" in surfaces.notes["prompt_tokens"]


def test_random_init_resolve_end_to_end(tmp_path, backbone, make_expr, genes, random_counts):
    cfg = GeneformerConfig(
        hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=64
    )
    match = backbone.gene_match(genes, cfg)
    assert match.fraction == 1.0 and "derived" in match.via
    resolved = backbone.resolve(cfg, genes=genes, run_dir=tmp_path)
    tokens = json.loads(Path(resolved.token_dictionary).read_text())
    assert list(tokens)[:2] == ["<pad>", "<mask>"] and len(tokens) == len(genes) + 2
    assert resolved.gene_median_dictionary.startswith(str(tmp_path))
    assert backbone.resolve(resolved, genes=genes, run_dir=tmp_path) is resolved
    module = backbone.build(resolved).eval()
    assert module.bert.config.vocab_size == len(tokens)
    cells = backbone.tokenize(make_expr(random_counts(6, len(genes)), genes), resolved, seed=0)
    with torch.no_grad():
        out = module(cells.collate([cells[i] for i in range(6)]))
    assert out.cell.shape == (6, 16) and torch.isfinite(out.cell).all()
    v2 = backbone.resolve(GeneformerConfig(version="v2"), genes=genes, run_dir=tmp_path / "v2")
    assert {"<cls>", "<eos>"} <= set(json.loads(Path(v2.token_dictionary).read_text()))


def test_example_config_fingerprint_and_check(tiny_v1, backbone, tmp_path):
    cfg = GeneformerConfig(**tiny_v1)
    assert backbone.check(cfg) == []
    prints = backbone.fingerprint(cfg)
    assert {
        "checkpoint",
        "config.json",
        "token_dictionary",
        "gene_median_dictionary",
        "gene_name_id_dict",
    } <= set(prints)
    assert all(len(v) == 64 for v in prints.values())
    again = plugin.GeneformerBackbone.example_config(tmp_path, ["CD3E", "LYZ"])
    assert json.loads(Path(again["token_dictionary"]).read_text()) == {
        "<pad>": 0,
        "<mask>": 1,
        "ENSG90000000000": 2,
        "ENSG90000000001": 3,
    }
    bad = GeneformerConfig(checkpoint=str(tmp_path / "nope"), gene_name_id_dict="missing.json")
    problems = dict(backbone.check(bad))
    assert "does not exist" in problems["backbone.checkpoint"]
    assert problems["backbone.token_dictionary"] == "required with a pretrained checkpoint"
    assert "backbone.gene_name_id_dict" in problems


def _expression(path, symbols_column: bool) -> Expression:
    import anndata

    adata = anndata.read_h5ad(path)
    X = sparse.csr_matrix(adata.X, dtype=np.float32)
    lib = (
        adata.obs["n_counts"].to_numpy()
        if "n_counts" in adata.obs
        else np.asarray(X.sum(axis=1)).reshape(-1)
    )
    return Expression(
        X=X,
        genes=tuple(map(str, adata.var_names)),
        kind="counts",
        library_size=lib,
        cell_ids=tuple(map(str, adata.obs_names)),
        gene_symbols=tuple(map(str, adata.var["gene_symbol"])) if symbols_column else None,
    )


@pytest.mark.parametrize(
    ("filename", "fraction", "via", "symbols_column"),
    [
        ("pbmc3k_seurat_labeled.h5ad", 0.817, "symbol -> ensembl", False),
        ("zheng_sorted_pbmc_facs.h5ad", 0.828, "identifier", True),
    ],
)
def test_real_v1_dictionaries(shared_data, backbone, filename, fraction, via, symbols_column):
    vocab = shared_data / "vocab"
    if not (vocab / "geneformer_v1_token_dictionary.json").is_file():
        pytest.skip("Geneformer V1 dictionaries are absent")
    cfg = GeneformerConfig(
        model_config=str(shared_data / "geneformer_configs" / "v1_6L_10M_config.json"),
        token_dictionary=str(vocab / "geneformer_v1_token_dictionary.json"),
        gene_median_dictionary=str(vocab / "geneformer_v1_gene_median_dictionary.json"),
        gene_name_id_dict=str(vocab / "geneformer_v1_gene_name_id_dict.json"),
    )
    expr = _expression(shared_data / filename, symbols_column)
    start = time.perf_counter()
    cells = backbone.tokenize(expr, cfg, seed=0)
    elapsed = time.perf_counter() - start
    match = cells.gene_match
    assert match.fraction == pytest.approx(fraction, abs=0.001)
    assert match.via.startswith(via) and match.vocabulary_size == 25_426
    assert len(cells) == expr.n_cells and elapsed < 20
    lengths = np.array([len(t) for t in cells.fields["input_ids"]])
    assert lengths.max() <= 2048 and np.median(lengths) > 300
    assert all(t.min() >= 2 for t in cells.fields["input_ids"][:50])  # no specials in V1


def test_random_init_medians_come_from_training_counts(tmp_path):
    """resolve() with training counts writes Geneformer-style non-zero medians (x / n * 1e4)."""
    import json

    import numpy as np
    from scipy import sparse

    from sctune.backbones.geneformer.config import GeneformerConfig
    from sctune.backbones.geneformer.plugin import GeneformerBackbone
    from sctune.core.cells import Expression

    X = sparse.csr_matrix(np.array([[1, 0, 3], [2, 0, 0], [4, 5, 0]], dtype=np.float32))
    lib = np.array([10.0, 20.0, 40.0])
    genes = ("ENSG00000000001", "ENSG00000000002", "ENSG00000000003")
    expr = Expression(X=X, genes=genes, kind="counts", library_size=lib, cell_ids=("a", "b", "c"))
    cfg = GeneformerConfig(
        hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, max_position_embeddings=16
    )
    out = GeneformerBackbone().resolve(cfg, genes=list(genes), run_dir=tmp_path, expression=expr)
    medians = json.loads((tmp_path / "geneformer_gene_median_dictionary.json").read_text())
    assert out.gene_median_dictionary is not None
    # gene 1: 1/10, 2/20, 4/40 (x1e4) -> all 1000; gene 2: 5/40*1e4 = 1250; gene 3: 3/10*1e4
    assert medians == {genes[0]: 1000.0, genes[1]: 1250.0, genes[2]: 3000.0}
