"""Adapter options: v1 defaults, the v2 preset, validation errors, cheap plugin imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from sctune.adapters.gene_encoder_prompt.config import GeneEncoderPromptConfig
from sctune.adapters.gene_token_prompt.config import GeneTokenPromptConfig
from sctune.adapters.lora.config import LoRAConfig
from sctune.adapters.prefix_prompt.config import PrefixPromptConfig
from sctune.core.capabilities import Capability

PLUGINS = [
    "sctune.adapters.gene_token_prompt.plugin",
    "sctune.adapters.gene_encoder_prompt.plugin",
    "sctune.adapters.prefix_prompt.plugin",
    "sctune.adapters.lora.plugin",
]


def test_v1_defaults():
    assert GeneTokenPromptConfig().mlp_ratio == 0.25
    enc = GeneEncoderPromptConfig()
    assert (enc.layers, enc.mlp_ratio, enc.mlp_adapter, enc.scale, enc.zero_init) == (
        "first_half",
        0.25,
        True,
        0.5,
        False,
    )
    pre = PrefixPromptConfig()
    assert (pre.num_tokens, pre.layers, pre.init) == (64, "all", "zeros")
    lora = LoRAConfig()
    assert (lora.rank, lora.alpha, lora.dropout, lora.targets, lora.layers) == (
        8,
        1.0,
        0.0,
        ["q", "v"],
        "all",
    )
    assert lora.train_bias
    assert not lora.merge


def test_v2_preset_and_explicit_override():
    assert GeneTokenPromptConfig(preset="v2").mlp_ratio == 1.0
    assert GeneTokenPromptConfig(preset="v2", mlp_ratio=0.5).mlp_ratio == 0.5
    enc = GeneEncoderPromptConfig(preset="v2")
    assert (enc.mlp_adapter, enc.layers) == (False, [0, 1, 2, 3, 4, 5])
    assert GeneEncoderPromptConfig(preset="v2", mlp_adapter=True).mlp_adapter
    pre = PrefixPromptConfig(preset="v2")
    assert (pre.num_tokens, pre.layers) == (8, [0, 1, 2, 3, 4, 5])
    assert PrefixPromptConfig(preset="v2", layers="all").layers == "all"
    assert LoRAConfig(preset="v2").layers == [0, 1, 2, 3, 4, 5]
    assert LoRAConfig(preset="v2", rank=4).rank == 4
    # the preset round-trips through a resolved recipe (model_dump -> validate)
    dumped = LoRAConfig(preset="v2", layers=[1, 0]).model_dump(mode="json")
    assert LoRAConfig(**dumped) == LoRAConfig(preset="v2", layers=[0, 1])


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (LoRAConfig, {"rank": 0}, "greater than 0"),
        (LoRAConfig, {"alpha": -1}, "greater than 0"),
        (LoRAConfig, {"dropout": 1.0}, "less than 1"),
        (LoRAConfig, {"dropout": -0.1}, "greater than or equal to 0"),
        (LoRAConfig, {"targets": ["q", "q"]}, "duplicates"),
        (LoRAConfig, {"targets": []}, "empty"),
        (LoRAConfig, {"targets": ["query"]}, "'q', 'k', 'v', 'o', 'ffn_in' or 'ffn_out'"),
        (LoRAConfig, {"layers": [0, 0]}, "duplicates"),
        (LoRAConfig, {"layers": [-1]}, ">= 0"),
        (LoRAConfig, {"layers": []}, "empty"),
        (LoRAConfig, {"layers": "half"}, "'all' or 'first_half'"),
        (LoRAConfig, {"rnak": 8}, "Extra inputs are not permitted"),
        (LoRAConfig, {"preset": "v3"}, "'v1' or 'v2'"),
        (GeneTokenPromptConfig, {"mlp_ratio": 0}, "greater than 0"),
        (GeneEncoderPromptConfig, {"mlp_ratio": -0.5}, "greater than 0"),
        (GeneEncoderPromptConfig, {"layers": [3, 3]}, "duplicates"),
        (PrefixPromptConfig, {"num_tokens": 0}, "greater than 0"),
        (PrefixPromptConfig, {"init": "uniform"}, "'zeros' or 'normal'"),
    ],
)
def test_bad_values_are_pydantic_errors(cls, options, message):
    with pytest.raises(ValidationError, match=message):
        cls(**options)


def test_configs_are_frozen():
    config = LoRAConfig()
    with pytest.raises(ValidationError):
        config.rank = 4


def test_requires_for_encoder_prompt():
    from sctune.adapters.gene_encoder_prompt.plugin import GeneEncoderPrompt

    both = frozenset({Capability.ATTENTION_OUTPUT, Capability.FFN_PARALLEL})
    assert GeneEncoderPrompt.requires == both
    assert GeneEncoderPrompt.requires_for(GeneEncoderPromptConfig()) == both
    assert GeneEncoderPrompt.requires_for(GeneEncoderPromptConfig(preset="v2")) == frozenset(
        {Capability.ATTENTION_OUTPUT}
    )


def test_plugins_register_and_do_not_import_torch():
    code = (
        "import importlib, sys\n"
        f"mods = {PLUGINS!r}\n"
        "names = [c.name for m in mods for c in importlib.import_module(m)"
        ".sctune_register_adapters()]\n"
        "print(','.join(names), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "gene_token_prompt,gene_encoder_prompt,prefix_prompt,lora",
        "False",
    ]


def test_registered_components_are_complete():
    import importlib

    for module in PLUGINS:
        (cls,) = importlib.import_module(module).sctune_register_adapters()
        assert cls.name
        assert cls.description
        assert cls.requires
        assert cls.trains
        for name, field in cls.config_cls.model_fields.items():
            assert field.description, f"{cls.name}.{name} has no description"
