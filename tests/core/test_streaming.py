"""``sctune predict`` streams a backed h5ad in chunks and gives what in-memory inference gives."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from sctune import api
from sctune.core.data import loaded_from_adata
from sctune.core.predictor import rebuild
from sctune.core.recipe import DataConfig
from sctune.core.trainer import embed_and_score, make_accelerator

REGISTRY = api.get_registry()


@pytest.fixture(scope="module")
def run_dir(tiny_lora_run: Path) -> Path:
    return tiny_lora_run


def _in_memory(run_dir: Path, adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """The pre-streaming predictor: whole AnnData in memory, one tokenization, one pass."""
    from types import SimpleNamespace

    backbone, bcfg, asm, task, _, prepared, manifest, _ = rebuild(run_dir, REGISTRY)
    d = manifest["data"]
    cfg = DataConfig(path="x.h5ad", label_column=d["label_column"], gene_column=d["gene_column"])
    data = loaded_from_adata(adata, cfg, name="q", where="query", require_labels=False)
    cells = backbone.tokenize(data.expression, bcfg, seed=int(manifest["seed"]))
    acc = make_accelerator(SimpleNamespace(precision="32", device="cpu"))
    for h in asm.merged_for_inference():
        h.merge()
    emb, logits = embed_and_score(asm.model, cells, 64, acc)
    return task.annotate(logits, prepared)["sctune_prediction"], emb


def test_one_chunk_equals_the_runs_own_inference(run_dir: Path, tiny_h5ad: Path, tmp_path: Path):
    out = api.predict(run_dir, tiny_h5ad, tmp_path / "a.h5ad", registry=REGISTRY, chunk_size=500)
    got, query = ad.read_h5ad(out), ad.read_h5ad(tiny_h5ad)
    want = ad.read_h5ad(run_dir / "predictions.h5ad")
    np.testing.assert_array_equal(
        got.obs["sctune_prediction"].to_numpy(str), want.obs["sctune_prediction"].to_numpy(str)
    )
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5)
    # everything of the query is kept: X, var, its own obs columns and index
    assert (got.X != query.X).nnz == 0 and list(got.var_names) == list(query.var_names)
    assert list(got.obs_names) == list(query.obs_names)
    for column in query.obs.columns:
        np.testing.assert_array_equal(got.obs[column].to_numpy(), query.obs[column].to_numpy())
    assert got.uns["sctune"]["backbone"] == "scgpt"


def test_chunks_equal_in_memory_prediction_of_the_same_cells(
    run_dir: Path, tiny_h5ad: Path, tmp_path: Path
):
    out = api.predict(run_dir, tiny_h5ad, tmp_path / "s.h5ad", registry=REGISTRY, chunk_size=37)
    got = ad.read_h5ad(out)
    query = ad.read_h5ad(tiny_h5ad)
    labels, embs = [], []
    for lo in range(0, query.n_obs, 37):  # the same cells, each chunk in memory
        lab, emb = _in_memory(run_dir, query[lo : lo + 37].copy())
        labels.append(np.asarray(lab, dtype=str))
        embs.append(emb)
    np.testing.assert_array_equal(
        got.obs["sctune_prediction"].to_numpy(str), np.concatenate(labels)
    )
    np.testing.assert_allclose(got.obsm["X_sctune"], np.concatenate(embs), atol=1e-6)
    # predicting on its own output overwrites the columns and the embedding in place
    again = api.predict(run_dir, out, tmp_path / "t.h5ad", registry=REGISTRY, chunk_size=37)
    twice = ad.read_h5ad(again)
    np.testing.assert_allclose(twice.obsm["X_sctune"], got.obsm["X_sctune"], atol=1e-6)
    assert list(twice.obs.columns) == list(got.obs.columns)


def test_bad_chunk_size_is_a_located_error(run_dir: Path, tiny_h5ad: Path, tmp_path: Path):
    from sctune.core.errors import DataError

    with pytest.raises(DataError, match="--chunk-size"):
        api.predict(run_dir, tiny_h5ad, tmp_path / "x.h5ad", registry=REGISTRY, chunk_size=0)


def test_max_cells_reads_only_the_drawn_rows_of_a_backed_file(tiny_h5ad: Path) -> None:
    """data.max_cells on a file: the rows are read from disk (backed), the same cells and values
    as subsampling the whole file in memory."""
    from sctune.core.data import _subsample, load_data

    cfg = DataConfig(path=str(tiny_h5ad), max_cells=50)
    got = load_data(cfg, seed=3)
    whole = ad.read_h5ad(tiny_h5ad)
    want = loaded_from_adata(whole, cfg, name="tiny.h5ad", subsample_seed=3)
    assert got.expression.cell_ids == want.expression.cell_ids
    assert (got.expression.X != want.expression.X).nnz == 0
    np.testing.assert_array_equal(got.labels, want.labels)
    rows = _subsample(whole.n_obs, 50, 3)
    assert got.expression.cell_ids == tuple(whole.obs_names[rows])
