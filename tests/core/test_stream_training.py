"""Training on a file read in chunks (``data.stream: true``): the same run as in memory, without
ever reading X whole; a chunked run round-trips through ``sctune predict``."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from sctune import api, testing
from sctune.core.streaming import StreamedData

REGISTRY = api.get_registry()
QUIET = {"progress": False, "log": lambda m: None}


def _recipe(backbone: str, tmp: Path, data: Path, name: str, **data_opts: object) -> dict:
    rec = testing.example_recipe(REGISTRY, backbone, "lora", tmp, data, epochs=1)
    rec["output"]["dir"] = str(tmp / name)
    rec["data"].update(data_opts)
    return rec


def _outputs(run_dir: Path) -> tuple[ad.AnnData, dict]:
    pred = ad.read_h5ad(run_dir / "predictions.h5ad")
    return pred, json.loads((run_dir / "metrics.json").read_text())["test"]


def _no_whole_reads(monkeypatch: pytest.MonkeyPatch, chunk: int) -> list[int]:
    """Fail if the run loads the file in memory; record the rows of every chunk read."""
    import sctune.core.runner as runner

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("data.stream loaded the whole file")

    monkeypatch.setattr(runner, "load_data", refuse)
    sizes: list[int] = []
    original = StreamedData._read_rows

    def counted(self: StreamedData, rows: np.ndarray) -> object:
        sizes.append(len(rows))
        assert len(rows) <= chunk
        return original(self, rows)

    monkeypatch.setattr(StreamedData, "_read_rows", counted)
    return sizes


@pytest.mark.parametrize("backbone", ["scgpt", "geneformer", "scbert"])
def test_one_chunk_is_the_in_memory_run(
    backbone: str, tiny_h5ad: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the whole file in one chunk a streamed run is the in-memory run, bit for bit:
    tokens, training, embeddings, predictions, metrics, the predictions file's matrix."""
    mem = api.run(_recipe(backbone, tmp_path, tiny_h5ad, "mem"), registry=REGISTRY, **QUIET)
    with monkeypatch.context() as m:
        reads = _no_whole_reads(m, 10_000)
        rec = _recipe(backbone, tmp_path, tiny_h5ad, "stream", stream=True, chunk_size=10_000)
        streamed = api.run(rec, registry=REGISTRY, **QUIET)
    assert reads and max(reads) == 120
    (a, ma), (b, mb) = _outputs(mem.run_dir), _outputs(streamed.run_dir)
    np.testing.assert_array_equal(a.obsm["X_sctune"], b.obsm["X_sctune"])
    np.testing.assert_array_equal(
        a.obs["sctune_prediction"].to_numpy(str), b.obs["sctune_prediction"].to_numpy(str)
    )
    assert ma == mb
    assert (a.X != b.X).nnz == 0 and list(a.var_names) == list(b.var_names)
    assert list(a.obs_names) == list(b.obs_names)


def test_chunked_run_with_hvg_round_trips_through_predict(
    tiny_h5ad: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 32 cells and data.hvg: the genes are the in-memory choice, predictions.h5ad
    holds the file's values of those genes, and ``sctune predict`` on it (same chunks)
    reproduces the run's own embeddings and labels."""
    from sctune.core.data import load_data
    from sctune.core.preprocess import select_hvg
    from sctune.core.recipe import DataConfig

    with monkeypatch.context() as m:
        reads = _no_whole_reads(m, 32)
        rec = _recipe("scgpt", tmp_path, tiny_h5ad, "run", stream=True, chunk_size=32, hvg=60)
        run = api.run(rec, registry=REGISTRY, **QUIET)
    assert reads and max(reads) == 32
    genes = (run.run_dir / "genes.txt").read_text().split()
    data = load_data(DataConfig(path=str(tiny_h5ad)), seed=0)
    split = json.loads((run.run_dir / "split.json").read_text())
    ids = {c: i for i, c in enumerate(data.expression.cell_ids)}
    train = np.array(sorted(ids[c] for c in split["train"]))
    assert genes == select_hvg(data.expression, train, 60)
    pred, _ = _outputs(run.run_dir)
    src = ad.read_h5ad(tiny_h5ad)
    assert list(pred.var_names) == genes
    assert (pred.X != src[:, genes].X).nnz == 0
    again = api.predict(
        run.run_dir,
        run.run_dir / "predictions.h5ad",
        tmp_path / "again.h5ad",
        registry=REGISTRY,
        chunk_size=32,
    )
    got = ad.read_h5ad(again)
    np.testing.assert_allclose(got.obsm["X_sctune"], pred.obsm["X_sctune"], atol=1e-5)
    np.testing.assert_array_equal(
        got.obs["sctune_prediction"].to_numpy(str), pred.obs["sctune_prediction"].to_numpy(str)
    )


def test_max_cells_streams_the_same_cells(tiny_h5ad: Path, tmp_path: Path) -> None:
    mem = api.run(
        _recipe("scgpt", tmp_path, tiny_h5ad, "m", max_cells=70), registry=REGISTRY, **QUIET
    )
    rec = _recipe("scgpt", tmp_path, tiny_h5ad, "s", max_cells=70, stream=True, chunk_size=100)
    st = api.run(rec, registry=REGISTRY, **QUIET)
    (a, ma), (b, mb) = _outputs(mem.run_dir), _outputs(st.run_dir)
    assert list(a.obs_names) == list(b.obs_names) and len(a) == 70
    np.testing.assert_array_equal(a.obsm["X_sctune"], b.obsm["X_sctune"])
    assert ma == mb


def test_tokens_are_cached_and_a_disabled_cache_leaves_nothing(
    tiny_h5ad: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    said: list[str] = []
    for name in ("a", "b"):
        rec = _recipe("scgpt", tmp_path, tiny_h5ad, name, stream=True, chunk_size=50)
        rec["data"]["cache_dir"] = str(cache)
        api.run(rec, registry=REGISTRY, progress=False, log=said.append)
    assert any("tokenized chunk by chunk" in s for s in said)
    assert any("read from the cache" in s for s in said)
    a, b = _outputs(tmp_path / "a")[0], _outputs(tmp_path / "b")[0]
    np.testing.assert_array_equal(a.obsm["X_sctune"], b.obsm["X_sctune"])
    off = tmp_path / "off"
    rec = _recipe("scgpt", tmp_path, tiny_h5ad, "c", stream=True, chunk_size=50)
    rec["data"].update(cache_dir=str(off), cache_tokens=False)
    result = api.run(rec, registry=REGISTRY, **QUIET)
    del result
    gc.collect()
    assert not any((off / "tokens").iterdir())


def test_batch_correction_streams_without_its_expression_extras(
    tiny_h5ad: Path, tmp_path: Path
) -> None:
    src = ad.read_h5ad(tiny_h5ad)
    src.obs["batch"] = np.where(np.arange(src.n_obs) % 2 == 0, "b1", "b2")
    path = tmp_path / "two.h5ad"
    src.write_h5ad(path)
    rec = testing.example_recipe(
        REGISTRY, "scgpt", "lora", tmp_path, path, task="batch_correction", epochs=1
    )
    rec["data"].update(stream=True, chunk_size=40)
    rec["output"]["dir"] = str(tmp_path / "bc")
    run = api.run(rec, registry=REGISTRY, **QUIET)
    pred, test = _outputs(run.run_dir)
    assert any("data.stream: true keeps it in the file" in n for n in test["notes"])
    assert "sctune" in test and "pca" not in test
    assert pred.obsm["X_sctune"].shape[0] == 120 and "X_pca" not in pred.obsm


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.path=scanpy:pbmc68k_reduced"], "reads one .h5ad file in chunks"),
        (["data.chunk_size=0"], "data.chunk_size"),
    ],
)
def test_what_cannot_stream_is_a_located_error(cli, overrides: list[str], message: str) -> None:
    r = cli("run", "quickstart", "data.stream=true", *overrides)
    assert r.code == 2 and message in r.text and "Traceback" not in r.text


def test_gepc_needs_the_matrix(cli, tiny_h5ad: Path, tmp_path: Path) -> None:
    r = cli(
        "run", "scgpt/pretrain_small", f"data.path={tiny_h5ad}", "data.stream=true",
        "task.gepc=true", f"output.dir={tmp_path / 'pt'}",
    )  # fmt: skip
    assert r.code == 2 and "task.gepc" in r.text and "data.stream" in r.text
    assert not (tmp_path / "pt").exists()


def test_inspect_streams_too(
    tiny_h5ad: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sctune inspect`` (build + one audited backward pass) reads a chunk, not the file."""
    reads = _no_whole_reads(monkeypatch, 40)
    rec = _recipe("scgpt", tmp_path, tiny_h5ad, "i", stream=True, chunk_size=40)
    report = api.inspect(rec, registry=REGISTRY)
    assert reads and max(reads) <= 40
    assert report["trainable"] > 0 and report["gradient_audit"]
