"""Recipe validation: envelope and plugin options, all problems at once, schema version, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sctune import api
from sctune.core.errors import RecipeError
from sctune.core.recipe import SCHEMA_VERSION, apply_overrides, find_recipe


def _base(**over: object) -> dict:
    rec = {
        "sctune": 1,
        "name": "t",
        "data": {"path": "x.h5ad"},
        "backbone": {"name": "scgpt"},
        "adapter": {"name": "lora"},
        "task": {"name": "cell_type"},
    }
    rec.update(over)
    return rec


def _problems(rec: dict, registry) -> str:
    with pytest.raises(RecipeError) as info:
        api.load(rec, registry=registry)
    return info.value.message


def test_minimal_recipe_fills_defaults(registry) -> None:
    rec = api.load(_base(), registry=registry)
    resolved = rec.resolved()
    assert resolved["sctune"] == SCHEMA_VERSION
    assert resolved["adapter"]["rank"] == 8 and resolved["trainer"]["epochs"] >= 1
    assert resolved["backbone"]["n_bins"] == 51
    again = api.load(resolved, registry=registry)  # the resolved recipe is itself valid
    assert again.resolved() == resolved


def test_envelope_and_plugin_problems_are_collected(registry) -> None:
    rec = _base(
        seed="abc",
        trainer={"epochs": 2, "batch_sise": 3},
        data={"path": "x", "lable": 1},
        adapter={"name": "lora", "rank": 0, "alpah": 2},
        extra_top=1,
    )
    message = _problems(rec, registry)
    for fragment in (
        "seed:",
        "trainer.batch_sise: unknown key; did you mean 'batch_size'?",
        "data.lable: unknown key",
        "adapter.rank:",
        "adapter.alpah: unknown key; did you mean 'alpha'?",
        "extra_top: unknown key",
    ):
        assert fragment in message, fragment
    assert "(6 problems)" in message


def test_schema_version(registry) -> None:
    message = _problems(_base(sctune=2), registry)
    assert "sctune: unsupported recipe schema version 2" in message
    assert "required key is missing" in _problems(
        {k: v for k, v in _base().items() if k != "sctune"}, registry
    )


def test_yaml_exponent_strings_are_accepted(registry, tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_base()) + "trainer:\n  optimizer: {lr: 1e-4, eps: 1.0e-8}\n")
    assert yaml.safe_load(path.read_text())["trainer"]["optimizer"]["lr"] == "1e-4"  # the gotcha
    rec = api.load(path, registry=registry)
    assert rec.trainer.optimizer.lr == pytest.approx(1e-4)


def test_unknown_plugin_names(registry) -> None:
    message = _problems(_base(backbone={"name": "scgtp"}, task={"name": "celltype"}), registry)
    assert "backbone.name: unknown backbone 'scgtp'; did you mean 'scgpt'?" in message
    assert "task.name: unknown task 'celltype'; did you mean 'cell_type'?" in message


def test_two_adapters_and_baseline_combinations(registry) -> None:
    rec = api.load(
        _base(adapter=[{"name": "gene_token_prompt"}, {"name": "gene_encoder_prompt"}]),
        registry=registry,
    )
    assert [a.name for a in rec.adapters] == ["gene_token_prompt", "gene_encoder_prompt"]
    message = _problems(_base(adapter=[{"name": "full"}, {"name": "lora"}]), registry)
    assert "cannot be combined with other adapters" in message
    message = _problems(_base(adapter=[{"name": "lora"}, {"name": "lora"}]), registry)
    assert "listed twice" in message


def test_overrides() -> None:
    data = _base()
    out = apply_overrides(
        data,
        [
            "adapter.rank=4",
            "trainer.optimizer.lr=5.0e-5",
            "name=x",
            "adapter.targets=[q, v]",
            "output.dir=",
        ],
    )
    assert out["adapter"]["rank"] == 4 and out["trainer"]["optimizer"]["lr"] == 5e-5
    assert out["adapter"]["targets"] == ["q", "v"] and out["output"]["dir"] is None
    assert data["adapter"] == {"name": "lora"}  # the input is not modified
    with pytest.raises(RecipeError, match="expected dotted.key=value"):
        apply_overrides(data, ["adapter.rank"])
    with pytest.raises(RecipeError, match="override 'name.x=1': cannot set 'x'"):
        apply_overrides(data, ["name.x=1"])


def test_shipped_recipes_validate(registry) -> None:
    shipped = api.recipes(registry)
    assert "quickstart" in shipped
    for name in shipped:
        try:
            rec = api.load(name, registry=registry)
        except RecipeError as exc:  # recipes for real checkpoints point at placeholder paths
            problems = exc.message.splitlines()[1:]
            assert problems and all("does not exist" in p or "not found" in p for p in problems), (
                name
            )
        else:
            assert rec.envelope.sctune == SCHEMA_VERSION
        text = shipped[name].read_text()
        assert text.startswith("#") and "sctune run" in text  # header with the run command
    assert find_recipe("quickstart", registry.recipe_dirs()) == shipped["quickstart"]


def test_malformed_yaml_override_is_a_recipe_error() -> None:
    from sctune.core.errors import RecipeError
    from sctune.core.recipe import apply_overrides

    with pytest.raises(RecipeError, match="not valid YAML"):
        apply_overrides({"adapter": {"name": "lora"}}, ["adapter={name:", "lora}"])
