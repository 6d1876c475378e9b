"""Relative paths in recipes: file values against the file's folder, overrides against the cwd."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from sctune import api
from sctune.core.config import PathField, PluginConfig
from sctune.core.paths import is_name, is_path_field, path_keys, resolve_paths, resolve_value
from sctune.core.recipe import load_recipe


def _recipe(data_path: str, **extra: object) -> dict:
    recipe = {
        "sctune": 1,
        "name": "paths",
        "data": {"path": data_path, "label_column": "cell_type"},
        "backbone": {"name": "scgpt", "embsize": 16, "nheads": 2, "d_hid": 16, "nlayers": 1},
        "adapter": {"name": "lora"},
        "task": {"name": "cell_type", "umap": False},
        "trainer": {"epochs": 1, "device": "cpu", "early_stopping": None},
        "output": {"plots": False},
    }
    for key, value in extra.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


@pytest.fixture
def project(tmp_path: Path, tiny_h5ad: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``proj/exp/recipe.yaml`` reading ``proj/exp/data/cells.h5ad``; the cwd is ``elsewhere``."""
    exp = tmp_path / "proj" / "exp"
    (exp / "data").mkdir(parents=True)
    shutil.copy(tiny_h5ad, exp / "data" / "cells.h5ad")
    (exp / "recipe.yaml").write_text(yaml.safe_dump(_recipe("data/cells.h5ad")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return exp


def test_names_and_values() -> None:
    base = Path("/base")
    assert is_name("scanpy:pbmc68k_reduced") and is_name("builtin:v1")
    assert not is_name("C:/data/x.h5ad") and not is_name("data/x.h5ad")
    assert resolve_value("data/x.h5ad", base) == "/base/data/x.h5ad"
    assert resolve_value("../x.h5ad", base) == "/x.h5ad"
    assert resolve_value("/abs/x.h5ad", base) == "/abs/x.h5ad"
    assert resolve_value("~/x.h5ad", base) == str(Path.home() / "x.h5ad")
    for unchanged in ("scanpy:pbmc68k_reduced", "builtin:v1", "", None, 3):
        assert resolve_value(unchanged, base) == unchanged
    assert resolve_value(["a", "/b"], base) == ["/base/a", "/b"]


def test_path_fields_are_found_from_annotations_and_markers() -> None:
    class Inner(BaseModel):
        weights: Path | None = None
        size: int = 1

    class Options(PluginConfig):
        vocab: str | None = PathField(None, description="a file or 'builtin:v1'")
        files: list[Path] = []
        inner: Inner = Inner()
        label: str = "x"

    keys = {spelling for spellings in path_keys(Options) for spelling in spellings}
    assert keys == {("vocab",), ("files",), ("inner", "weights")}
    assert not is_path_field(Options.model_fields["label"])


def test_builtin_backbones_declare_their_paths(registry) -> None:
    def keys(name: str) -> set[str]:
        cls = registry.entries["backbone"][name].cls.config_cls
        return {s[0] for spellings in path_keys(cls) for s in spellings}

    assert {"checkpoint", "vocab"} <= keys("scgpt")
    assert {"checkpoint", "gene_order", "gene2vec"} <= keys("scbert")
    assert {
        "checkpoint",
        "model_config",  # the alias of model_config_path
        "token_dictionary",
        "gene_median_dictionary",
        "gene_name_id_dict",
        "ensembl_mapping_dict",
    } <= keys("geneformer")
    assert "hidden_size" not in keys("geneformer")


def test_file_paths_resolve_against_the_recipe_folder(project: Path, registry) -> None:
    rec = load_recipe(project / "recipe.yaml", registry)
    assert rec.data.path == str(project / "data" / "cells.h5ad")
    report = api.validate(str(project / "recipe.yaml"), registry=registry)
    assert report["recipe"].endswith("recipe.yaml")


def test_cli_validates_a_recipe_in_another_folder(project: Path, cli) -> None:
    result = cli("validate", project / "recipe.yaml")
    assert result.code == 0, result
    result = cli("validate", "../proj/exp/recipe.yaml")  # the recipe itself given relative to cwd
    assert result.code == 0, result


def test_override_paths_resolve_against_the_working_directory(
    project: Path, registry, tiny_h5ad: Path
) -> None:
    shutil.copy(tiny_h5ad, Path.cwd() / "here.h5ad")
    rec = load_recipe(project / "recipe.yaml", registry, ["data.path=here.h5ad"])
    assert rec.data.path == str(Path.cwd() / "here.h5ad")
    # a whole section given on the command line: its paths are the command line's too
    (Path.cwd() / "tok.json").write_text('{"<pad>": 0, "<mask>": 1, "ENSG00000000003": 2}')
    rec = load_recipe(
        project / "recipe.yaml",
        registry,
        ["backbone={name: geneformer, hidden_size: 16, token_dictionary: tok.json}"],
    )
    assert rec.backbone.config.token_dictionary == str(Path.cwd() / "tok.json")


def test_output_dir_and_split_file_follow_the_rule(project: Path, registry) -> None:
    recipe = _recipe(
        "data/cells.h5ad",
        data={"split": {"file": "splits/s.json"}},
        output={"dir": "runs/mine"},
    )
    (project / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    rec = load_recipe(project / "recipe.yaml", registry)
    assert rec.envelope.data.split.file == str(project / "splits" / "s.json")
    assert rec.envelope.output.dir == str(project / "runs" / "mine")
    rec = load_recipe(project / "recipe.yaml", registry, ["output.dir=out"])
    assert rec.envelope.output.dir == str(Path.cwd() / "out")
    rec = load_recipe(project / "recipe.yaml", registry, ["output.dir=null"])
    assert rec.envelope.output.dir is None  # default runs/<name> in the working directory


def test_plugin_paths_in_a_file_and_names_untouched(project: Path, registry) -> None:
    recipe = _recipe(
        "scanpy:pbmc68k_reduced",
        backbone={
            "name": "geneformer",
            "hidden_size": 16,
            "num_layers": 1,
            "num_heads": 2,
            "intermediate_size": 16,
            "token_dictionary": "builtin:v1",
            "gene_median_dictionary": "builtin:v1",
            "gene_name_id_dict": "dicts/names.json",
        },
    )
    del recipe["backbone"]["embsize"], recipe["backbone"]["nheads"]
    del recipe["backbone"]["d_hid"], recipe["backbone"]["nlayers"]
    out = resolve_paths(recipe, registry, project)
    assert out["data"]["path"] == "scanpy:pbmc68k_reduced"
    assert out["backbone"]["token_dictionary"] == "builtin:v1"
    assert out["backbone"]["gene_name_id_dict"] == str(project / "dicts" / "names.json")
    assert recipe["backbone"]["gene_name_id_dict"] == "dicts/names.json"  # input not modified
    # an override that switches the plugin: its keys still resolve against the file's folder
    in_file = _recipe("x.h5ad", backbone={"name": "unknown", "vocab": "v.json"})
    like = {**in_file, "backbone": {**in_file["backbone"], "name": "scgpt"}}
    assert resolve_paths(in_file, registry, project)["backbone"]["vocab"] == "v.json"
    resolved = resolve_paths(in_file, registry, project, like=like)
    assert resolved["backbone"]["vocab"] == str(project / "v.json")


def test_unknown_plugins_are_left_to_validation(registry) -> None:
    recipe = _recipe("x.h5ad", backbone={"name": "nope", "checkpoint": "c"})
    out = resolve_paths(recipe, registry, Path("/base"))
    assert out["backbone"]["checkpoint"] == "c"
    assert out["data"]["path"] == "/base/x.h5ad"


def test_resolved_recipe_holds_absolute_paths(project: Path, registry) -> None:
    result = api.run(
        str(project / "recipe.yaml"),
        ["output.dir=run", "data.max_cells=60"],
        registry=registry,
        progress=False,
        log=lambda m: None,
    )
    assert result.run_dir == Path.cwd() / "run"
    resolved = yaml.safe_load((result.run_dir / "recipe.resolved.yaml").read_text())
    assert resolved["data"]["path"] == str(project / "data" / "cells.h5ad")
    assert resolved["output"]["dir"] == str(Path.cwd() / "run")
