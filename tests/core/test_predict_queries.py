"""Queries and files a user brings: chunked reads judge empty cells over the whole file, a query
is read in the run's gene namespace, and a query lacking the run's matrix or gene column is told
how to fix it."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from sctune import api, testing
from sctune.core.errors import DataError, SctuneWarning
from sctune.core.recipe import DataConfig

REGISTRY = api.get_registry()


@pytest.fixture(scope="module")
def run_dir(tiny_lora_run: Path) -> Path:
    return tiny_lora_run


def _emptied(tiny_h5ad: Path, path: Path, n_empty: int) -> Path:
    """The tiny data with its first ``n_empty`` cells emptied (as a sorted file may have them)."""
    adata = ad.read_h5ad(tiny_h5ad)
    X = sparse.csr_matrix(adata.X, dtype=np.float32).tolil()
    X[:n_empty] = 0
    adata.X = sparse.csr_matrix(X)
    adata.X.eliminate_zeros()
    adata.write_h5ad(path)
    return path


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, SctuneWarning)]


def test_predict_judges_empty_cells_over_the_whole_query(
    run_dir: Path, tiny_h5ad: Path, tmp_path: Path
) -> None:
    """10 empty cells of 120 at the start of the file: a warning about 10 of 120, whatever the
    chunk size (chunks of 10 used to refuse the first chunk as 100 % empty)."""
    query = _emptied(tiny_h5ad, tmp_path / "q.h5ad", 10)
    for chunk in (10, 500):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = api.predict(
                run_dir, query, tmp_path / f"{chunk}.h5ad", registry=REGISTRY, chunk_size=chunk
            )
        said = [m for m in _messages(caught) if "have no counts" in m]
        assert said and all(m.startswith("10 of 120 cells") for m in said), said
        assert ad.read_h5ad(out).n_obs == 120


def test_predict_refuses_a_mostly_empty_query_and_writes_nothing(
    run_dir: Path, tiny_h5ad: Path, tmp_path: Path
) -> None:
    query = _emptied(tiny_h5ad, tmp_path / "q.h5ad", 80)
    with pytest.raises(DataError, match=r"query: 80 of 120 cells \(67%\) have no counts"):
        api.predict(run_dir, query, tmp_path / "out.h5ad", registry=REGISTRY, chunk_size=100)
    assert not list(tmp_path.glob("out.h5ad*"))


def test_stream_judges_empty_cells_over_the_whole_file(tiny_h5ad: Path, tmp_path: Path) -> None:
    from sctune.core.streaming import StreamedData

    path = _emptied(tiny_h5ad, tmp_path / "e.h5ad", 10)
    cfg = DataConfig(path=str(path), label_column="cell_type", stream=True, chunk_size=15)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = StreamedData(cfg, seed=0)
        try:
            for _ in data.chunks():  # later passes do not repeat it per chunk
                pass
        finally:
            data.close()
    said = [m for m in _messages(caught) if "have no counts" in m]
    assert len(said) == 1 and said[0].startswith("10 of 120 cells"), said
    path = _emptied(tiny_h5ad, tmp_path / "m.h5ad", 80)
    cfg = DataConfig(path=str(path), label_column="cell_type", stream=True, chunk_size=100)
    with pytest.raises(DataError, match=r"data.path: 80 of 120 cells"):
        StreamedData(cfg, seed=0)


def test_predict_reads_a_query_through_its_symbol_column(
    run_dir: Path, tiny_h5ad: Path, tmp_path: Path
) -> None:
    """A run trained on symbols annotates a query with Ensembl var_names and the symbols in
    var['gene_symbol'] (as the run would read it among several files): the run's own result."""
    adata = ad.read_h5ad(tiny_h5ad)
    adata.var["gene_symbol"] = list(map(str, adata.var_names))
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    adata.write_h5ad(tmp_path / "ens.h5ad")
    out = api.predict(run_dir, tmp_path / "ens.h5ad", tmp_path / "out.h5ad", registry=REGISTRY)
    got, want = ad.read_h5ad(out), ad.read_h5ad(run_dir / "predictions.h5ad")
    np.testing.assert_array_equal(
        got.obs["sctune_prediction"].to_numpy(str), want.obs["sctune_prediction"].to_numpy(str)
    )
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5, rtol=0)


def test_in_run_namespace_keeps_a_query_that_already_matches() -> None:
    from sctune.core.cells import Expression
    from sctune.core.predictor import in_run_namespace

    expr = Expression(
        X=sparse.csr_matrix((1, 2), dtype=np.float32),
        genes=("CD3E", "MS4A1"),
        kind="counts",
        library_size=None,
        cell_ids=("c",),
        gene_ids=("ENSG1", "ENSG2"),
    )
    assert in_run_namespace(expr, ["CD3E", "MS4A1"]) is expr
    assert in_run_namespace(expr, None) is expr
    swapped = in_run_namespace(expr, ["ENSG1", "ENSG2"])
    assert swapped.genes == ("ENSG1", "ENSG2") and swapped.gene_symbols == ("CD3E", "MS4A1")
    assert swapped.gene_ids is None


def test_query_without_the_runs_matrix_or_gene_column_says_what_to_do(
    tiny_h5ad: Path, tmp_path: Path, cli
) -> None:
    adata = ad.read_h5ad(tiny_h5ad)
    adata.layers["counts"] = adata.X.copy()
    adata.var["symbol_col"] = list(map(str, adata.var_names))
    adata.write_h5ad(tmp_path / "train.h5ad")
    rec = testing.example_recipe(REGISTRY, "scgpt", "lora", tmp_path, tmp_path / "train.h5ad")
    rec["data"].update(source="layer:counts", gene_column="symbol_col")
    rec["output"]["dir"] = str(tmp_path / "run")
    rec["trainer"]["num_threads"] = 1
    run = api.run(rec, registry=REGISTRY, progress=False, log=lambda m: None).run_dir
    res = cli("predict", run, tiny_h5ad, "-o", tmp_path / "o.h5ad", registry=REGISTRY)
    assert res.code == 2 and "Traceback" not in res.text, res
    assert "'layer:counts' is not in 'tiny.h5ad'" in res.text
    assert "adata.layers['counts'] = <the matrix>" in res.text
    del adata.layers["counts"]
    adata.layers["counts"] = adata.X.copy()
    del adata.var["symbol_col"]
    adata.write_h5ad(tmp_path / "q.h5ad")
    res = cli("predict", run, tmp_path / "q.h5ad", "-o", tmp_path / "o.h5ad", registry=REGISTRY)
    assert res.code == 2 and "Traceback" not in res.text, res
    assert "column 'symbol_col' not found" in res.text and "null uses var_names" not in res.text
    assert "adata.var['symbol_col'] = adata.var_names" in res.text
    assert not (tmp_path / "o.h5ad").exists()


def test_a_test_split_of_one_class_gives_no_sklearn_warning() -> None:
    from sctune.tasks.cell_type.metrics import classification_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = classification_metrics(np.array([1]), np.array([1]), ["a", "b", "c"])
    assert out["accuracy"] == 1.0 and out["n_test_classes"] == 1


def test_labels_that_differ_by_spaces_or_case_are_warned_about(
    tiny_h5ad: Path, tmp_path: Path
) -> None:
    """'B ' and 'b' next to 'B' would each become a class of their own: said, with the pairs."""
    from sctune.core.data import load_data

    adata = ad.read_h5ad(tiny_h5ad)
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    first = labels[0]
    labels[:2] = f"{first} "
    labels[2:4] = first.lower() if first.lower() != first else first.upper()
    adata.obs["cell_type"] = labels
    adata.write_h5ad(tmp_path / "l.h5ad")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_data(DataConfig(path=str(tmp_path / "l.h5ad"), label_column="cell_type"))
    said = [m for m in _messages(caught) if "differ only by spaces" in m]
    assert len(said) == 1 and repr(f"{first} ") in said[0], said
    assert f"{first} " in set(data.labels)  # warned, not rewritten
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_data(DataConfig(path=str(tiny_h5ad), label_column="cell_type"))
    assert not [m for m in _messages(caught) if "differ only by spaces" in m]


def test_no_validation_cells_is_said_and_the_training_loss_chooses_the_epoch(
    tiny_h5ad: Path, tmp_path: Path
) -> None:
    rec = testing.example_recipe(REGISTRY, "scgpt", "lora", tmp_path, tiny_h5ad, epochs=3)
    rec["data"]["split"] = {"method": "stratified", "valid": 0.0, "test": 0.2}
    rec["output"]["dir"] = str(tmp_path / "run")
    rec["trainer"].update(num_threads=1, early_stopping={"monitor": "valid/loss", "patience": 5})
    said: list[str] = []
    res = api.run(rec, registry=REGISTRY, progress=False, log=said.append)
    assert any(
        "no validation cells" in m and "train/loss stands in, for stopping" in m for m in said
    )
    import json

    log = (res.run_dir / "train_log.jsonl").read_text().splitlines()
    losses = [json.loads(line)["train/loss"] for line in log]
    assert res.metrics["train"]["best_epoch"] == int(np.argmin(losses)) + 1


def test_label_clashes_across_pooled_files_are_warned_about(
    tiny_h5ad: Path, tmp_path: Path
) -> None:
    from sctune.core.data import load_data

    a = ad.read_h5ad(tiny_h5ad)
    b = a.copy()
    b.obs_names = [f"b{i}" for i in range(b.n_obs)]
    b.obs["cell_type"] = [f" {v.upper()} " for v in b.obs["cell_type"].astype(str)]
    a.write_h5ad(tmp_path / "a.h5ad")
    b.write_h5ad(tmp_path / "b.h5ad")
    cfg = DataConfig(
        path=[str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad")], label_column="cell_type"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_data(cfg)
    said = [m for m in _messages(caught) if "differ only by spaces" in m]
    assert said and "2 files" in said[-1], said
