"""Replacing a plugin by name on the command line drops the old plugin's options."""

from __future__ import annotations

import pytest

from sctune import api
from sctune.core.recipe import apply_overrides

RECIPE = {
    "backbone": {"name": "scgpt", "embsize": 64, "nlayers": 4},
    "adapter": {"name": "gene_encoder_prompt", "layers": "all", "mlp_ratio": 0.5},
    "task": {"name": "cell_type", "sampler": "shuffle"},
    "trainer": {"epochs": 3},
}


def test_a_new_adapter_name_drops_the_old_options() -> None:
    out = apply_overrides(RECIPE, ["adapter.name=lora"])
    assert out["adapter"] == {"name": "lora"}
    assert out["backbone"] == RECIPE["backbone"] and out["trainer"] == RECIPE["trainer"]
    assert RECIPE["adapter"]["layers"] == "all"  # the input is not modified


def test_the_same_name_keeps_the_options() -> None:
    out = apply_overrides(RECIPE, ["adapter.name=gene_encoder_prompt", "adapter.layers=[0]"])
    assert out["adapter"] == {"name": "gene_encoder_prompt", "layers": [0], "mlp_ratio": 0.5}


@pytest.mark.parametrize(
    "overrides",
    [
        ["adapter.name=lora", "adapter.rank=4", "adapter.layers=[0, 1]"],
        ["adapter.rank=4", "adapter.layers=[0, 1]", "adapter.name=lora"],
        ["adapter.rank=4", "adapter.name=lora", "adapter.layers=[0, 1]"],
    ],
    ids=["after", "before", "around"],
)
def test_options_given_on_the_command_line_stay_in_any_order(overrides: list[str]) -> None:
    out = apply_overrides(RECIPE, overrides)
    assert out["adapter"] == {"name": "lora", "rank": 4, "layers": [0, 1]}


def test_every_plugin_section_and_adapter_lists() -> None:
    out = apply_overrides(RECIPE, ["backbone.name=scbert", "task.name=other"])
    assert out["backbone"] == {"name": "scbert"} and out["task"] == {"name": "other"}
    listed = {
        **RECIPE,
        "adapter": [{"name": "gene_token_prompt", "mlp_ratio": 0.5}, {"name": "lora", "rank": 2}],
    }
    out = apply_overrides(listed, ["adapter.1.name=prefix_prompt", "adapter.1.num_tokens=8"])
    assert out["adapter"] == [
        {"name": "gene_token_prompt", "mlp_ratio": 0.5},
        {"name": "prefix_prompt", "num_tokens": 8},
    ]
    # a key called 'name' elsewhere is an ordinary option
    out = apply_overrides(
        {"trainer": {"optimizer": {"name": "adam", "lr": 0.1}}}, ["trainer.optimizer.name=sgd"]
    )
    assert out["trainer"]["optimizer"] == {"name": "sgd", "lr": 0.1}


def test_a_whole_section_override_is_explicit() -> None:
    out = apply_overrides(RECIPE, ["adapter={name: lora, rank: 2}"])
    assert out["adapter"] == {"name": "lora", "rank": 2}


def _quickstart_adapters(registry) -> list[str]:
    backbone = api.load("quickstart", registry=registry).backbone.name
    return [a for a in registry.names("adapter") if a in registry.compatible_adapters(backbone)]


def test_quickstart_takes_every_adapter_by_name(registry) -> None:
    names = _quickstart_adapters(registry)
    assert len(names) == len(registry.names("adapter"))  # scgpt fits every built-in
    own = api.load("quickstart", registry=registry).adapters[0].name
    for name in names:
        rec = api.load("quickstart", [f"adapter.name={name}"], registry=registry)
        assert [a.name for a in rec.adapters] == [name]
        if name != own:  # a new adapter starts from its own defaults
            assert rec.adapters[0].config == registry.get("adapter", name).cls.config_cls()


def test_the_quickstart_header_override_validates(cli) -> None:
    result = cli("validate", "quickstart", "trainer.epochs=5", "adapter.name=lora", "--no-data")
    assert result.code == 0, result
