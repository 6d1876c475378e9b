"""Several input files: data.path as a list or mapping, batch column, gene mapping, refusals."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml
from scipy import sparse

from sctune import api, testing
from sctune.core.data import load_data, split_cells
from sctune.core.errors import DataError, RecipeError
from sctune.core.paths import resolve_value
from sctune.core.recipe import DataConfig, SplitConfig, load_recipe, validate_recipe


@pytest.fixture(scope="module")
def base() -> ad.AnnData:
    """pbmc68k_reduced with counts: 700 cells x 765 symbol genes, labels in 'cell_type'."""
    return testing.pbmc68k_counts()


def _ensembl(symbols: list[str]) -> list[str]:
    return [f"ENSG{i:011d}" for i, _ in enumerate(symbols)]


def _part(base: ad.AnnData, cells: slice, genes: slice = slice(None)) -> ad.AnnData:
    return base[cells, genes].copy()


def _write(adata: ad.AnnData, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return str(path)


def _as_ensembl(adata: ad.AnnData, *, keep_symbols: bool = True) -> ad.AnnData:
    """Ensembl ids in var_names (as in the Zheng data), symbols in var['gene_symbol']."""
    out = adata.copy()
    symbols = list(map(str, out.var_names))
    out.var_names = _ensembl(symbols)
    if keep_symbols:
        out.var["gene_symbol"] = symbols
    return out


@pytest.fixture(scope="module")
def two_files(base: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("two")
    return (
        _write(_part(base, slice(0, 300)), folder / "donor_a.h5ad"),
        _write(_part(base, slice(300, 700)), folder / "donor_b.h5ad"),
    )


def test_a_list_concatenates_the_files_and_names_batches_by_stem(two_files, base) -> None:
    data = load_data(DataConfig(path=list(two_files)))
    expr = data.expression
    assert expr.X.shape == (700, 765) and expr.kind == "counts"
    assert list(data.obs["batch"].cat.categories) == ["donor_a", "donor_b"]
    assert (data.obs["batch"] == "donor_a").sum() == 300
    assert list(expr.cell_ids) == list(map(str, base.obs_names))  # no collision: no prefix
    np.testing.assert_array_equal(data.labels, base.obs["cell_type"].astype(str).to_numpy())
    np.testing.assert_allclose(expr.X.toarray(), base.X.toarray())
    np.testing.assert_allclose(expr.library_size, base.obs["n_counts"].to_numpy())
    assert [f["batch"] for f in data.files] == ["donor_a", "donor_b"]
    assert [f["genes_kept"] for f in data.files] == [765, 765]
    assert any("kept the 765 found in every file" in n for n in data.notes)


def test_a_mapping_names_the_batches_and_batch_key_the_column(two_files) -> None:
    cfg = DataConfig(path={"left": two_files[0], "right": two_files[1]}, batch_key="donor")
    data = load_data(cfg)
    assert "batch" not in data.obs.columns
    assert data.obs["donor"].value_counts().to_dict() == {"right": 400, "left": 300}
    assert data.source == "X"


def test_colliding_cell_ids_get_the_batch_as_prefix(base, tmp_path: Path) -> None:
    a = _write(_part(base, slice(0, 200)), tmp_path / "a.h5ad")
    b = _write(_part(base, slice(0, 200)), tmp_path / "b.h5ad")
    data = load_data(DataConfig(path=[a, b]))
    ids = data.expression.cell_ids
    assert len(set(ids)) == 400 and ids[0].startswith("a:") and ids[200].startswith("b:")
    assert list(data.obs.index) == list(ids)
    assert any("prefixed with its batch name" in n for n in data.notes)


def test_symbol_and_ensembl_files_meet_on_symbols(base, tmp_path: Path) -> None:
    ens = _as_ensembl(_part(base, slice(300, 700)))
    symbols = list(ens.var["gene_symbol"])
    symbols[1] = symbols[0]  # two Ensembl ids with one symbol (as Zheng's 'Y_RNA')
    ens.var["gene_symbol"] = symbols
    a = _write(_part(base, slice(0, 300)), tmp_path / "sym.h5ad")
    b = _write(ens, tmp_path / "ens.h5ad")
    data = load_data(DataConfig(path=[a, b]))
    expr = data.expression
    assert expr.genes[0] == symbols[0] and len(expr.genes) == 764  # the merged one is shared
    assert expr.gene_ids is not None and expr.gene_ids[0] == ens.var_names[0]  # from ens.h5ad
    merged = expr.X[300:, 0].toarray().ravel()
    want = (ens.X[:, 0] + ens.X[:, 1]).toarray().ravel()
    np.testing.assert_allclose(merged, want)  # counts summed
    assert any("occur more than once" in n and "summed" in n for n in data.notes)
    assert any(
        "genes as symbols (sym: var_names, ens: var['gene_symbol'])" in n for n in data.notes
    )
    assert [f["genes_kept"] for f in data.files] == [764, 764]


def test_duplicates_in_lognorm_files_keep_the_first_column(base, tmp_path: Path) -> None:
    log = testing.tiny_adata(200, counts=False, seed=1)
    log.obs_names = [f"log{i}" for i in range(log.n_obs)]
    ens = _as_ensembl(log)
    first = ens.X[:, 0].toarray().ravel()
    symbols = list(ens.var["gene_symbol"])
    symbols[1] = symbols[0]
    ens.var["gene_symbol"] = symbols
    a = _write(testing.tiny_adata(200, counts=False, seed=2), tmp_path / "sym.h5ad")
    b = _write(ens, tmp_path / "ens.h5ad")
    data = load_data(DataConfig(path=[a, b]))
    assert data.expression.kind == "lognorm"
    np.testing.assert_allclose(data.expression.X[200:, 0].toarray().ravel(), first, rtol=1e-6)
    assert any("first column of each was kept" in n for n in data.notes)


def test_ensembl_ids_when_only_they_are_shared(base, tmp_path: Path) -> None:
    sym = _part(base, slice(0, 300))
    sym.var["gene_ids"] = _ensembl(list(map(str, sym.var_names)))
    a = _write(sym, tmp_path / "sym.h5ad")
    b = _write(_as_ensembl(_part(base, slice(300, 700)), keep_symbols=False), tmp_path / "e.h5ad")
    data = load_data(DataConfig(path=[a, b]))
    assert data.expression.genes[0] == "ENSG00000000000"
    assert data.expression.gene_symbols == tuple(map(str, base.var_names))
    assert any(
        "genes as Ensembl ids (sym: var['gene_ids'], e: var_names)" in n for n in data.notes
    )


def test_files_without_a_common_namespace_are_refused(base, tmp_path: Path) -> None:
    a = _write(_part(base, slice(0, 300)), tmp_path / "sym.h5ad")
    b = _write(_as_ensembl(_part(base, slice(300, 700)), keep_symbols=False), tmp_path / "e.h5ad")
    with pytest.raises(DataError) as err:
        load_data(DataConfig(path=[a, b]))
    text = err.value.render()
    assert "cannot be mapped to one namespace" in text
    assert "'sym.h5ad' symbols (var_names, no Ensembl id column)" in text
    assert "'e.h5ad' Ensembl ids (var_names, no symbol column)" in text
    assert "adata.var['gene_symbol']" in text


def test_too_few_shared_genes_are_refused(base, tmp_path: Path) -> None:
    a = _write(_part(base, slice(0, 300), slice(0, 300)), tmp_path / "a.h5ad")
    b = _write(_part(base, slice(300, 700), slice(250, 765)), tmp_path / "b.h5ad")
    with pytest.raises(DataError) as err:
        load_data(DataConfig(path=[a, b]))
    text = err.value.render()
    assert "data.path: only 50 genes (symbols) are found in every file" in text
    assert "'a.h5ad' 300" in text and "'b.h5ad' 515" in text and "hint:" in text


def test_an_existing_batch_column_is_refused(base, tmp_path: Path) -> None:
    clash = _part(base, slice(300, 700))
    clash.obs["batch"] = "x"
    a = _write(_part(base, slice(0, 300)), tmp_path / "a.h5ad")
    b = _write(clash, tmp_path / "b.h5ad")
    with pytest.raises(DataError) as err:
        load_data(DataConfig(path=[a, b]))
    text = err.value.render()
    assert (
        "data.batch_key: adata.obs of 'b.h5ad' (data.path.1) already has a column 'batch'" in text
    )
    assert "data.batch_key: sctune_batch" in text
    assert load_data(DataConfig(path=[a, b], batch_key="file")).obs["file"].nunique() == 2


def test_a_label_column_missing_from_some_files_is_refused(base, tmp_path: Path) -> None:
    unlabeled = _part(base, slice(300, 700))
    del unlabeled.obs["cell_type"]
    a = _write(_part(base, slice(0, 300)), tmp_path / "a.h5ad")
    b = _write(unlabeled, tmp_path / "b.h5ad")
    with pytest.raises(DataError) as err:
        load_data(DataConfig(path={"one": a, "two": b}))
    text = err.value.render()
    assert (
        "column 'cell_type' is missing from adata.obs of 1 of 2 files: 'b.h5ad' (data.path.two)"
        in text
    )
    assert "data.label_column: null" in text
    data = load_data(DataConfig(path={"one": a, "two": b}, label_column=None))
    assert set(data.labels) == {"unknown"}
    assert any("data.label_column is null" in n for n in data.notes)


def test_label_column_null_on_one_file(two_files) -> None:
    data = load_data(DataConfig(path=two_files[0], label_column=None))
    assert set(data.labels) == {"unknown"} and len(data.labels) == 300
    assert any("the task gets no labels" in n for n in data.notes)


def test_mixed_kinds_are_refused_unless_data_kind_is_lognorm(base, tmp_path: Path) -> None:
    log = testing.tiny_adata(200, counts=False, seed=3)
    log.obs_names = [f"log{i}" for i in range(log.n_obs)]
    a = _write(_part(base, slice(0, 300)), tmp_path / "counts.h5ad")
    b = _write(log, tmp_path / "log.h5ad")
    with pytest.raises(DataError) as err:
        load_data(DataConfig(path=[a, b]))
    text = err.value.render()
    assert "the files hold different kinds of values" in text
    assert "counts ('counts.h5ad', X): raw counts" in text and "log-normalised values" in text
    assert "data.kind: lognorm" in text
    data = load_data(DataConfig(path=[a, b], kind="lognorm"))
    assert data.expression.kind == "lognorm" and data.expression.library_size is None
    row = base.X[0].toarray().ravel()
    want = np.log1p(row * 1e4 / base.obs["n_counts"].iloc[0])
    np.testing.assert_allclose(data.expression.X[0].toarray().ravel(), want, rtol=1e-5)
    assert any("were log-normalised" in n for n in data.notes)


def test_max_cells_subsamples_the_concatenation(two_files) -> None:
    data = load_data(DataConfig(path=list(two_files), max_cells=100), seed=0)
    assert data.expression.n_cells == 100 == len(data.obs) == len(data.labels)
    assert set(data.obs["batch"]) == {"donor_a", "donor_b"}


def test_a_group_split_on_two_batches_says_it_needs_three(two_files) -> None:
    data = load_data(DataConfig(path=list(two_files)))
    cfg = SplitConfig(method="group", group_column="batch")
    with pytest.raises(DataError) as err:
        split_cells(data.obs, data.labels, cfg, seed=0)
    text = err.value.render()
    assert "'batch' has 2 groups ('donor_a', 'donor_b'); a group split needs at least 3" in text


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ([], "data.path: the list of files is empty"),
        ({}, "data.path: the mapping of files is empty"),
        (["x/a.h5ad", "y/a.h5ad"], "would both be batch 'a'"),
        (["a.h5ad", "a.h5ad"], "file 'a.h5ad' is listed twice"),
        (3, "data.path: expected an .h5ad path (or a built-in name"),
        (["a.h5ad", 3], "data.path: item 1: expected an .h5ad path, got 3"),
    ],
)
def test_data_path_shapes_are_validated(registry, path, message) -> None:
    recipe = _recipe({"path": path})
    with pytest.raises(RecipeError) as err:
        validate_recipe(recipe, registry)
    assert message in err.value.render()


def _recipe(data: dict) -> dict:
    return {
        "sctune": 1,
        "name": "multi",
        "data": {"label_column": "cell_type", **data},
        "backbone": {"name": "scgpt", "embsize": 16, "nheads": 2, "d_hid": 16, "nlayers": 1},
        "adapter": {"name": "lora"},
        "task": {"name": "cell_type", "umap": False},
        "trainer": {"epochs": 1, "device": "cpu", "early_stopping": None},
        "output": {"plots": False},
    }


def test_relative_paths_in_lists_and_mappings(registry, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "exp"
    folder.mkdir()
    base = Path("/base")
    assert resolve_value({"a": "x.h5ad", "b": "scanpy:pbmc68k_reduced"}, base) == {
        "a": "/base/x.h5ad",
        "b": "scanpy:pbmc68k_reduced",
    }
    monkeypatch.chdir(tmp_path)
    for path, want in (
        (
            ["data/a.h5ad", "scanpy:pbmc68k_reduced"],
            [str(folder / "data/a.h5ad"), "scanpy:pbmc68k_reduced"],
        ),
        (
            {"a": "data/a.h5ad", "b": "/abs/b.h5ad"},
            {"a": str(folder / "data/a.h5ad"), "b": "/abs/b.h5ad"},
        ),
    ):
        (folder / "recipe.yaml").write_text(yaml.safe_dump(_recipe({"path": path})))
        rec = load_recipe(folder / "recipe.yaml", registry)
        assert rec.data.path == want
        assert rec.resolved()["data"]["path"] == want


def test_run_on_two_files_writes_the_batch_column(two_files, registry, tmp_path: Path) -> None:
    rec = testing.example_recipe(registry, "scgpt", "lora", tmp_path, Path(two_files[0]))
    rec["data"]["path"] = {"a": two_files[0], "b": two_files[1]}
    rec["data"]["max_cells"] = 160
    rec["trainer"]["num_threads"] = 1
    result = api.run(rec, registry=registry, progress=False, log=lambda m: None)
    pred = ad.read_h5ad(result.run_dir / "predictions.h5ad")
    assert set(pred.obs["batch"].astype(str)) == {"a", "b"} and pred.n_obs == 160
    out = api.predict(
        result.run_dir,
        result.run_dir / "predictions.h5ad",
        tmp_path / "again.h5ad",
        registry=registry,
    )
    again = ad.read_h5ad(out)
    np.testing.assert_allclose(again.obsm["X_sctune"], pred.obsm["X_sctune"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("files", "cells"),
    [
        (("pancreas_xin_scclassify_subset", "pancreas_wang_scclassify_subset"), (674, 501)),
        (("pbmc3k_seurat_labeled", "zheng_sorted_pbmc_facs"), (2638, 3874)),
    ],
)
def test_the_shared_multi_batch_settings_load(shared_data: Path, files, cells) -> None:
    paths = {name: str(shared_data / f"{name}.h5ad") for name in files}
    data = load_data(DataConfig(path=paths))
    counts = data.obs["batch"].value_counts()
    assert tuple(int(counts[n]) for n in files) == cells
    kept = {f["genes_kept"] for f in data.files}
    assert len(kept) == 1 and kept.pop() == len(data.expression.genes) >= 200
    assert any("found in every file" in n for n in data.notes)
    assert sparse.issparse(data.expression.X)
