"""Every checkpoint shipped inside a built-in backbone (``builtin:<name>``): a real-format folder
with its options, cell record and NOTICE; it loads strictly and says so; a recipe may repeat but
not contradict what the checkpoint decides; it is written back by name; a run on it predicts what
it trained (train -> save -> predict on the outputs themselves)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml

from sctune import api
from sctune.core.shipped import Shipped

REGISTRY = api.get_registry()
BACKBONES = ("scgpt", "scbert", "geneformer")


def _shipped(backbone: str) -> Shipped:
    return importlib.import_module(f"sctune.backbones.{backbone}.checkpoints").SHIPPED


CASES = [pytest.param(b, name, id=f"{b}-{name}") for b in BACKBONES for name in _shipped(b).names]


def _config(backbone: str, **options: object):
    return REGISTRY.get("backbone", backbone).cls.config_cls(**options)


def test_every_builtin_backbone_ships_a_checkpoint() -> None:
    assert {c.values[0] for c in CASES} == set(BACKBONES)


@pytest.mark.parametrize(("backbone", "name"), CASES)
def test_a_shipped_checkpoint_is_a_documented_real_format_folder_that_loads_strictly(
    backbone: str, name: str
) -> None:
    shipped = _shipped(backbone)
    folder = shipped.folder(name)
    for f in ("backbone.yaml", "pretraining_cells.json", "NOTICE"):
        assert (folder / f).is_file(), f
    notice = (folder / "NOTICE").read_text()
    assert f"builtin:{name}" in notice and "licence" in notice
    options = yaml.safe_load((folder / "backbone.yaml").read_text())["backbone"]
    assert options["name"] == backbone

    cfg = _config(backbone, checkpoint=f"builtin:{name}")
    dumped = cfg.model_dump()
    assert dumped["checkpoint"] == f"builtin:{name}"  # written back by name ...
    assert not any(str(v).startswith(str(folder)) for v in dumped.values())  # ... every file
    assert _config(backbone, **dumped) == cfg  # and reads back to the same options

    plugin = REGISTRY.get("backbone", backbone).cls()
    module = plugin.build(cfg)
    summary = module.load_report.summary()
    assert summary.startswith("loaded ") and "tensors" in summary, summary
    assert not plugin.randomly_initialised(cfg)


@pytest.mark.parametrize(("backbone", "name"), CASES)
def test_its_cell_record_names_the_shared_files(backbone: str, name: str) -> None:
    record = json.loads((_shipped(backbone).folder(name) / "pretraining_cells.json").read_text())
    assert record["dataset"] == ["pbmc3k_seurat_labeled.h5ad", "zheng_sorted_pbmc_facs.h5ad"]
    sizes = {k: len(record[k]) for k in ("train", "valid", "test")}
    assert sizes == {"train": 4557, "valid": 652, "test": 1303}


def test_the_scbert_checkpoint_fills_in_what_it_decides_and_refuses_a_contradiction(cli) -> None:
    cfg = _config("scbert", checkpoint="builtin:pbmc_small", gene_order=None, pooling="scbert")
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.dim_head) == (64, 4, 4, 16)  # from backbone.yaml
    assert cfg.gene_order is not None and cfg.gene_order.name == "scbert_gene_order.txt"
    assert cfg.pooling == "scbert"  # a suggestion: the recipe's value wins
    assert (
        _config("scbert", checkpoint="builtin:pbmc_small", dim=64).dim == 64
    )  # repeating is fine
    res = cli(
        "validate",
        "scbert/small_gene_token_prompt_cell_type",
        "backbone.checkpoint=builtin:pbmc_small",
        "backbone.dim=32",
    )
    assert res.code == 2 and "Traceback" not in res.text
    assert "'dim' is 32" in res.text and "builtin:pbmc_small" in res.text and "64" in res.text


@pytest.mark.parametrize("backbone", BACKBONES)
def test_an_unknown_name_is_refused_naming_the_shipped_ones(backbone: str) -> None:
    with pytest.raises(ValueError, match="'builtin:pbmc_small'"):
        _config(backbone, checkpoint="builtin:no_such_model")


def test_files_of_a_shipped_folder_are_named_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.pth").write_bytes(b"x")
    (tmp_path / "m" / "genes.txt").write_text("A\n")
    (tmp_path / "m" / "backbone.yaml").write_text(
        "backbone: {name: x, checkpoint: w.pth, gene_order: genes.txt, dim: 8, pooling: mean}\n"
    )
    shipped = Shipped(
        tmp_path, {"m": "m"}, path_keys=("checkpoint", "gene_order"), fmt="x", fixed=("dim",)
    )
    out = shipped.expand({"checkpoint": "builtin:m", "pooling": "cls"})
    assert out == {
        "checkpoint": str(tmp_path / "m" / "w.pth"),
        "gene_order": str(tmp_path / "m" / "genes.txt"),
        "dim": 8,
        "pooling": "cls",
    }
    assert shipped.name_of(out["checkpoint"]) == "builtin:m"
    assert shipped.name_of(out["gene_order"]) == "builtin:m/genes.txt"
    assert shipped.name_of(tmp_path / "elsewhere") is None
    assert shipped.resolve("builtin:m/genes.txt") == tmp_path / "m" / "genes.txt"
    assert shipped.expand({"checkpoint": "builtin:m", "dim": 8})["dim"] == 8
    with pytest.raises(ValueError, match="no file 'nope.txt'"):
        shipped.resolve("builtin:m/nope.txt")
    with pytest.raises(ValueError, match="'dim' is 4"):
        shipped.expand({"checkpoint": "builtin:m", "dim": 4})
    assert shipped.expand({"checkpoint": "some/path"}) == {"checkpoint": "some/path"}


@pytest.mark.parametrize(("backbone", "name"), [c for c in CASES if c.values[0] != "scgpt"])
def test_a_run_on_it_predicts_what_it_trained(backbone: str, name: str, tmp_path: Path) -> None:
    """train -> save -> predict on the quickstart's cells (scGPT's is the quickstart itself,
    checked in tests/test_roundtrip_recipes.py), from a moved run folder."""
    recipe = {
        "scbert": "scbert/small_gene_token_prompt_cell_type",
        "geneformer": "geneformer/small_lora_cell_type",
    }[backbone]
    said: list[str] = []
    res = api.run(
        recipe,
        [
            f"backbone.checkpoint=builtin:{name}",
            *_sizes_from_the_checkpoint(backbone),
            "trainer.epochs=1",
            "trainer.num_threads=1",
            "data.max_cells=120",
            "output.plots=false",
            f"output.dir={tmp_path / 'run'}",
        ],
        progress=False,
        log=said.append,
    )
    assert any(f"'{backbone}' pretrained weights: loaded" in m for m in said), said
    assert res.metrics["backbone_randomly_initialised"] is False
    resolved = yaml.safe_load((res.run_dir / "recipe.resolved.yaml").read_text())["backbone"]
    assert resolved["checkpoint"] == f"builtin:{name}"
    moved = tmp_path / "moved"
    res.run_dir.rename(moved)
    want = ad.read_h5ad(moved / "predictions.h5ad")
    got = ad.read_h5ad(api.predict(moved, moved / "predictions.h5ad", tmp_path / "p.h5ad"))
    columns = [c for c in want.obs.columns if c.startswith("sctune_") and c != "sctune_split"]
    assert "sctune_prediction" in columns
    for c in columns:
        if want.obs[c].dtype.kind in "fc":
            np.testing.assert_allclose(got.obs[c], want.obs[c], rtol=1e-5, atol=1e-5)
        else:
            assert (got.obs[c].to_numpy(dtype=str) == want.obs[c].to_numpy(dtype=str)).all(), c
    np.testing.assert_allclose(got.obsm["X_sctune"], want.obsm["X_sctune"], atol=1e-5, rtol=0)


def _sizes_from_the_checkpoint(backbone: str) -> list[str]:
    """The small recipes state a random model's sizes; with the checkpoint they come from it."""
    keys = {
        "scbert": ("dim", "depth", "heads", "dim_head"),
        "geneformer": (
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "token_dictionary",
            "gene_median_dictionary",
        ),
    }[backbone]
    return [f"backbone.{k}=null" for k in keys]


def test_the_geneformer_checkpoint_brings_its_dictionaries_and_takes_its_own_sizes() -> None:
    cfg = _config("geneformer", checkpoint="builtin:pbmc_small")
    assert Path(cfg.token_dictionary).name == "geneformer_token_dictionary.json"
    assert Path(cfg.gene_median_dictionary).name == "geneformer_gene_median_dictionary.json"
    assert cfg.gene_name_id_dict == "builtin:v1"  # the packaged V1 symbol map, not a copy
    same = _config("geneformer", checkpoint="builtin:pbmc_small", hidden_size=128, num_layers=4)
    assert same.hidden_size == 128  # a recipe may repeat the checkpoint's sizes ...
    with pytest.raises(ValueError, match="fixes the model shape; remove 'hidden_size'"):
        _config(
            "geneformer", checkpoint="builtin:pbmc_small", hidden_size=64
        )  # ... not change them
    with pytest.raises(ValueError, match="'token_dictionary' is 'builtin:v1'"):
        _config("geneformer", checkpoint="builtin:pbmc_small", token_dictionary="builtin:v1")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_spelling_of_a_shipped_checkpoint_is_the_checkpoint(backbone: str) -> None:
    """A trailing slash, the packaged path, the checkpoint file itself: the same options as the
    name (filled in, checked, written back by name), never a half-expanded config."""
    shipped = _shipped(backbone)
    bare = _config(backbone, checkpoint="builtin:pbmc_small")
    target = shipped.resolve("builtin:pbmc_small")
    spellings = ["builtin:pbmc_small/", str(target)]
    if Path(str(target)).is_file():
        spellings.append(f"builtin:pbmc_small/{Path(str(target)).name}")
    for spelling in spellings:
        assert _config(backbone, checkpoint=spelling) == bare, spelling
        assert _config(backbone, checkpoint=spelling).model_dump() == bare.model_dump()


def test_files_are_named_inside_the_shipped_folder_only() -> None:
    shipped = _shipped("scbert")
    for value in ("builtin:pbmc_small/../../checkpoints/__init__.py", "builtin:pbmc_small/nope"):
        with pytest.raises(ValueError, match="no file .* in the shipped checkpoint 'pbmc_small'"):
            shipped.resolve(value)
    # a bare name in a file option is that checkpoint's file for the option, if it has one
    own = _config("scbert", checkpoint="some.pth", gene_order="builtin:pbmc_small").gene_order
    assert own == shipped.folder("pbmc_small") / "scbert_gene_order.txt"
    with pytest.raises(ValueError, match="name a file as 'builtin:pbmc_small/<file>'"):
        _config("geneformer", checkpoint="/x", gene_name_id_dict="builtin:pbmc_small")


def test_the_token_cache_key_hashes_the_shipped_files_not_their_names() -> None:
    from sctune.core.tokencache import _options

    key = _options(_config("geneformer", checkpoint="builtin:pbmc_small"))
    assert "file" in key["token_dictionary"] and "file" in key["gene_median_dictionary"]
    assert "dir" in key["checkpoint"]
    assert "file" in _options(_config("scbert", checkpoint="builtin:pbmc_small"))["gene_order"]


def test_predict_refuses_to_rebuild_other_options_than_the_run_trained(tmp_path: Path) -> None:
    """A run whose saved options the installed plugins would now read differently (e.g. a run
    from before a shipped checkpoint decided its value style) is refused, not silently changed."""
    from sctune.core import artifacts as A
    from sctune.core.errors import CheckpointError
    from sctune.core.predictor import rebuild

    res = api.run(
        "quickstart",
        [
            "trainer.epochs=1",
            "trainer.num_threads=1",
            "data.max_cells=90",
            "output.plots=false",
            f"output.dir={tmp_path / 'run'}",
        ],
        progress=False,
        log=lambda m: None,
    )
    manifest = A.read_json(res.run_dir / A.MANIFEST)
    manifest["backbone"]["config"]["value_style"] = "binned"  # what an older sctune allowed
    (res.run_dir / A.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="value_style: 'binned' in the run, 'log1p' now"):
        rebuild(res.run_dir, REGISTRY)
