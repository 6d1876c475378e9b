"""Data in: matrix choice, counts detection, splits, split files and the preflight."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from sctune import testing
from sctune.core.data import (
    detect_kind,
    load_data,
    read_split,
    split_cells,
    write_split,
)
from sctune.core.errors import DataError
from sctune.core.recipe import DataConfig, SplitConfig


def test_detect_kind() -> None:
    counts = sparse.csr_matrix(np.array([[0, 3, 1], [7, 0, 0]], dtype=np.float32))
    assert detect_kind(counts) == "counts"
    lognorm = counts.copy()
    lognorm.data = np.log1p(lognorm.data)
    assert detect_kind(lognorm) == "lognorm"
    assert detect_kind(np.array([[-0.5, 1.2], [0.3, 2.0]])) == "scaled"


def test_scanpy_builtin_picks_raw_lognorm() -> None:
    data = load_data(DataConfig(path="scanpy:pbmc68k_reduced"))
    assert data.source == "raw" and data.expression.kind == "lognorm"
    assert any("X holds scaled" in n for n in data.notes)
    assert data.expression.n_cells == 700 and len(set(data.labels)) == 10


def test_counts_file(tiny_h5ad: Path) -> None:
    data = load_data(DataConfig(path=str(tiny_h5ad)))
    assert (data.source, data.expression.kind) == ("X", "counts")
    # library size is the full-library n_counts, not the 200-gene row sum
    rowsum = np.asarray(data.expression.X.sum(axis=1)).ravel()
    assert (data.expression.library_size > rowsum).all()
    forced = load_data(DataConfig(path=str(tiny_h5ad), kind="lognorm"))
    assert forced.expression.kind == "lognorm"


def test_testing_counts_equal_shared_file(shared_data: Path) -> None:
    import anndata as ad

    ref = ad.read_h5ad(shared_data / "pbmc68k_reduced_counts.h5ad")
    ours = testing.pbmc68k_counts()
    assert list(ref.obs_names) == list(ours.obs_names)
    assert list(ref.var_names) == list(ours.var_names)
    assert (ref.X != ours.X).nnz == 0
    assert (ref.obs["cell_type"].astype(str).to_numpy() == ours.obs["cell_type"].to_numpy()).all()


def test_source_choices_and_errors(tiny_h5ad: Path) -> None:
    with pytest.raises(DataError, match="data.source: 'layer:counts' is not in"):
        load_data(DataConfig(path=str(tiny_h5ad), source="layer:counts"))
    with pytest.raises(DataError, match="data.gene_column: column 'ensembl' not found"):
        load_data(DataConfig(path=str(tiny_h5ad), gene_column="ensembl"))
    with pytest.raises(DataError, match="unknown built-in dataset 'scanpy:pbmc3k'"):
        load_data(DataConfig(path="scanpy:pbmc3k"))


def _labels(counts: dict[str, int]) -> np.ndarray:
    return np.array([c for c, n in counts.items() for _ in range(n)])


def test_stratified_keeps_every_class_in_train() -> None:
    labels = _labels({"a": 50, "b": 20, "c": 3, "d": 1})
    obs = pd.DataFrame(index=[f"c{i}" for i in range(len(labels))])
    split = split_cells(obs, labels, SplitConfig(valid=0.1, test=0.2), seed=0)
    assert set(labels[split["train"]]) == {"a", "b", "c", "d"}
    allidx = np.concatenate([split[s] for s in ("train", "valid", "test")])
    assert sorted(allidx.tolist()) == list(range(len(labels)))  # a partition
    assert (labels[split["test"]] == "a").sum() == 10
    again = split_cells(obs, labels, SplitConfig(valid=0.1, test=0.2), seed=0)
    assert all((again[s] == split[s]).all() for s in split)


def test_column_split() -> None:
    labels = _labels({"a": 6, "b": 6})
    obs = pd.DataFrame(
        {"part": ["train"] * 4 + ["Test"] * 2 + ["val"] + ["training"] * 5},
        index=[f"c{i}" for i in range(12)],
    )
    split = split_cells(obs, labels, SplitConfig(method="column", column="part"), seed=0)
    assert split["test"].tolist() == [4, 5] and split["valid"].tolist() == [6]
    obs["part"] = "bogus"
    with pytest.raises(DataError, match="has values \\['bogus'\\]"):
        split_cells(obs, labels, SplitConfig(method="column", column="part"), seed=0)


def test_group_split_holds_out_whole_groups() -> None:
    donors = np.repeat([f"d{i}" for i in range(6)], 10)
    labels = np.tile(["a", "b"], 30)
    obs = pd.DataFrame({"donor": donors}, index=[f"c{i}" for i in range(60)])
    split = split_cells(
        obs, labels, SplitConfig(method="group", group_column="donor", test=0.3), seed=0
    )
    groups = {s: set(donors[idx]) for s, idx in split.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["valid"]
    assert not groups["valid"] & groups["test"]
    assert len(groups["valid"]) == 1 and len(groups["test"]) >= 1 and len(groups["train"]) >= 1
    assert sum(len(v) for v in split.values()) == 60
    with pytest.raises(DataError, match="needs at least 3"):
        split_cells(
            obs.assign(donor="x"),
            labels,
            SplitConfig(method="group", group_column="donor"),
            seed=0,
        )
    with pytest.raises(DataError, match="group_column: column 'patient' not found"):
        split_cells(obs, labels, SplitConfig(method="group", group_column="patient"), seed=0)


def test_split_file_round_trip(tmp_path: Path) -> None:
    labels = _labels({"a": 30, "b": 30})
    ids = [f"cell{i}" for i in range(60)]
    obs = pd.DataFrame(index=ids)
    split = split_cells(obs, labels, SplitConfig(), seed=3)
    write_split(tmp_path / "split.json", ids, split, seed=3)
    assert json.loads((tmp_path / "split.json").read_text())["seed"] == 3
    # another run with the cells in another order gets the same cells in each part
    perm = np.random.default_rng(0).permutation(60)
    shuffled = [ids[i] for i in perm]
    reused = split_cells(
        pd.DataFrame(index=shuffled),
        labels[perm],
        SplitConfig(file=str(tmp_path / "split.json")),
        seed=99,
    )
    for part in split:
        assert sorted(shuffled[i] for i in reused[part]) == sorted(ids[i] for i in split[part])
    with pytest.raises(DataError, match="cells of .* are not in the data"):
        read_split(tmp_path / "split.json", ids[:50])
