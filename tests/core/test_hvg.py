"""``data.hvg``: a run keeps the most variable genes of its TRAINING cells, and predict keeps the
same genes of new cells, whatever else the query holds."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from sctune import api
from sctune.core.cells import Expression
from sctune.core.errors import SctuneError
from sctune.core.preprocess import keep_genes, select_hvg

OVERRIDES = [
    "data.max_cells=120",
    "data.hvg=150",
    "task.min_class_cells=1",
    "backbone.value_style=log1p",  # no random tie-breaking: a cell's tokens do not depend on its neighbours
    "trainer.epochs=1",
    "trainer.num_threads=1",
    "output.plots=false",
]


def test_keep_genes_restricts_columns_and_recomputes_the_library() -> None:
    X = np.array([[1, 0, 3, 5], [0, 2, 0, 1]], dtype=np.float32)
    from scipy import sparse

    expr = Expression(
        X=sparse.csr_matrix(X),
        genes=("a", "b", "c", "a"),
        kind="counts",
        library_size=np.array([100.0, 200.0]),
        cell_ids=("x", "y"),
        gene_symbols=("A", "B", "C", "A2"),
    )
    out = keep_genes(expr, ["c", "a", "zz"])  # order kept, unknown skipped, first duplicate
    assert out.genes == ("c", "a") and out.gene_symbols == ("C", "A")
    np.testing.assert_array_equal(out.X.toarray(), [[3, 1], [0, 0]])
    np.testing.assert_array_equal(out.library_size, [4.0, 0.0])


def test_a_run_keeps_its_training_hvgs_and_predict_keeps_them_too(tmp_path: Path) -> None:
    result = api.run(
        "quickstart",
        [*OVERRIDES, f"output.dir={tmp_path / 'run'}"],
        progress=False,
        log=lambda m: None,
    )
    run = result.run_dir
    genes = (run / "genes.txt").read_text().split()
    assert len(genes) == 150
    own = ad.read_h5ad(run / "predictions.h5ad")
    assert own.n_vars == 150 and list(own.var_names) == genes

    # the same choice as select_hvg on the training cells of the full matrix
    full = sc.datasets.pbmc68k_reduced()
    full = ad.AnnData(X=full.raw.X, obs=full.obs, var=full.raw.var)
    split = json.loads((run / "split.json").read_text())
    train = np.flatnonzero(full.obs_names.isin(split["train"]))
    from scipy import sparse

    expr = Expression(
        X=sparse.csr_matrix(full.X, dtype=np.float32),
        genes=tuple(full.var_names),
        kind="lognorm",
        library_size=None,
        cell_ids=tuple(full.obs_names),
    )
    assert sorted(select_hvg(expr, train, 150)) == sorted(genes)

    # a query with EVERY gene: predict keeps the run's 150 and reproduces the run
    query = full[own.obs_names].copy()
    query.write_h5ad(tmp_path / "query.h5ad")
    out = ad.read_h5ad(api.predict(run, tmp_path / "query.h5ad", tmp_path / "out.h5ad"))
    np.testing.assert_allclose(out.obsm["X_sctune"], own.obsm["X_sctune"], atol=1e-5, rtol=0)
    same = out.obs["sctune_prediction"].astype(str) == own.obs["sctune_prediction"].astype(str)
    assert same.all()


def test_hvg_must_be_positive() -> None:
    with pytest.raises(SctuneError, match=r"data\.hvg"):
        api.validate("quickstart", ["data.hvg=0"], check_data=False)
