"""The public adapter helpers, used as a third-party author would: an IA3-style adapter.

``IA3`` below learns a per-row scaling of the K and V projection outputs (ones at init). It is
written with public imports only (checked by :func:`test_ia3_uses_only_public_imports`): block
selection with ``select_layers``, packed-linear grouping with ``group_projections`` and row-slice
wrapping with ``wrap_rows``. On every registered backbone with projections it must leave the
model exactly unchanged at init, train only its scales, and pass ``sctune.testing``'s checker.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from pydantic import Field
from torch import nn

from sctune import hookimpl, testing
from sctune.core.adapter import Adapter, AdapterHandle, LayerSpec, select_layers
from sctune.core.capabilities import Capability
from sctune.core.config import PluginConfig
from sctune.core.errors import CompatibilityError, RecipeError
from sctune.core.surfaces import (
    ProjectionGroup,
    RowTransformLinear,
    Surfaces,
    group_projections,
    placement,
    wrap_rows,
)

# --------------------------------------------------------------------------- the IA3 adapter


class IA3Config(PluginConfig):
    """Options of the test IA3 adapter."""

    targets: list[str] = Field(
        default_factory=lambda: ["k", "v"], description="projections whose outputs are scaled"
    )
    layers: LayerSpec = Field("all", description="blocks to adapt")


class RowScale(nn.Module):
    """``y * l`` with a learned ``l`` of one entry per output row, ones at init."""

    def __init__(self, rows: int, *, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(rows, device=device, dtype=dtype))
        self.merged = False

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.merged else y * self.scale.to(y.dtype)


class IA3(Adapter):
    name: ClassVar[str] = "ia3"
    config_cls: ClassVar[type[PluginConfig]] = IA3Config
    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.PROJECTIONS})
    description: ClassVar[str] = "test adapter: learned per-row scaling of the K and V outputs"

    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        assert isinstance(config, IA3Config)
        layers = select_layers(config.layers, len(surfaces.blocks), adapter=self.name)
        device, dtype = placement(module)
        groups = group_projections(surfaces, config.targets, layers=layers, adapter=self.name)
        installed: list[tuple[RowTransformLinear, ProjectionGroup, dict[str, RowScale]]] = []
        for group in groups:
            scales = {
                t: RowScale(stop - start, device=device, dtype=dtype)
                for t, (start, stop) in group.rows.items()
            }
            installed.append((wrap_rows(group, scales, name=self.name), group, scales))

        @torch.no_grad()
        def merge() -> None:
            for wrapper, group, scales in installed:
                for t, layer in scales.items():
                    if not layer.merged:
                        start, stop = group.rows[t]
                        wrapper.weight[start:stop] *= layer.scale[:, None]
                        if wrapper.bias is not None:
                            wrapper.bias[start:stop] *= layer.scale
                        layer.merged = True

        @torch.no_grad()
        def unmerge() -> None:
            for wrapper, group, scales in installed:
                for t, layer in scales.items():
                    if layer.merged:
                        start, stop = group.rows[t]
                        wrapper.weight[start:stop] /= layer.scale[:, None]
                        if wrapper.bias is not None:
                            wrapper.bias[start:stop] /= layer.scale
                        layer.merged = False

        params = [s.scale for _, _, scales in installed for s in scales.values()]
        mergeable = all(w.inner is None for w, _, _ in installed)
        return AdapterHandle(
            self.name,
            params,
            merge=merge if mergeable else None,
            unmerge=unmerge if mergeable else None,
            info={"layers": layers, "wrapped_linears": len(installed)},
        )


@hookimpl
def sctune_register_adapters() -> list[type[Adapter]]:
    return [IA3]


# --------------------------------------------------------------------------- the tests

REGISTRY = testing.registry_with(testing.ToyBackbone)
WITH_PROJECTIONS = [
    name
    for name in REGISTRY.names("backbone")
    if Capability.PROJECTIONS in REGISTRY.get("backbone", name).cls.provides
]


def test_ia3_uses_only_public_imports() -> None:
    tree = ast.parse(Path(__file__).read_text())
    modules = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sctune")
    }
    private = {m for m in modules if any(part.startswith("_") for part in m.split("."))}
    plugins = {m for m in modules if m.startswith(("sctune.adapters", "sctune.backbones"))}
    assert not private and not plugins, (private, plugins)


def test_every_builtin_backbone_offers_projections() -> None:
    assert {"scgpt", "geneformer", "scbert"} <= set(WITH_PROJECTIONS)


@pytest.mark.parametrize("backbone", WITH_PROJECTIONS)
def test_ia3_is_identity_at_init_and_trains_only_its_scales(backbone: str, tmp_path: Path) -> None:
    ex = testing.example_backbone(REGISTRY.get("backbone", backbone).cls, tmp_path)
    before = ex.module(ex.batch).cell
    n_base = sum(p.numel() for p in ex.module.parameters())
    handle = IA3().apply(ex.module, ex.surfaces(), IA3Config())
    assert handle.parameters and handle.info["wrapped_linears"] >= len(ex.surfaces().blocks)
    assert torch.equal(ex.module(ex.batch).cell, before)  # ones: exactly the unadapted model

    for p in handle.parameters:
        p.requires_grad_(True)
    ex.module.train()
    ex.module(ex.batch).cell.pow(2).mean().backward()
    ids = {id(p) for p in handle.parameters}
    for name, p in ex.module.named_parameters():
        if id(p) in ids:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"dead scale {name}"
        else:
            assert p.grad is None, f"frozen tensor {name} got a gradient"
    scale_names = [n for n, p in ex.module.named_parameters() if id(p) in ids]
    assert all(".transforms.ia3_" in n for n in scale_names), scale_names
    n_new = sum(p.numel() for p in ex.module.parameters()) - n_base
    assert n_new == sum(p.numel() for p in handle.parameters)


@pytest.mark.parametrize("backbone", WITH_PROJECTIONS)
def test_ia3_passes_the_plugin_checker(backbone: str, tmp_path: Path) -> None:
    testing.check_adapter(
        IA3, backbones=[REGISTRY.get("backbone", backbone).cls], workdir=tmp_path
    )


def test_packed_qkv_is_one_group_with_row_ranges(tmp_path: Path) -> None:
    ex = testing.example_backbone(REGISTRY.get("backbone", "scgpt").cls, tmp_path)
    surfaces = ex.surfaces()
    d = surfaces.hidden_size
    groups = group_projections(surfaces, ["q", "k", "v"], layers=[0], adapter="ia3")
    assert len(groups) == 1
    assert dict(groups[0].rows) == {"q": (0, d), "k": (d, 2 * d), "v": (2 * d, 3 * d)}
    split = group_projections(surfaces, ["v", "o"], layers=[0, 1], adapter="ia3")
    assert [(g.block, list(g.rows)) for g in split] == [
        (0, ["v"]),
        (0, ["o"]),
        (1, ["v"]),
        (1, ["o"]),
    ]


def test_separate_linears_are_separate_groups(tmp_path: Path) -> None:
    ex = testing.example_backbone(REGISTRY.get("backbone", "geneformer").cls, tmp_path)
    groups = group_projections(ex.surfaces(), ["k", "v"], layers=[0], adapter="ia3")
    assert [list(g.rows) for g in groups] == [["k"], ["v"]]
    assert all(g.rows[t] == (0, g.module.out_features) for g in groups for t in g.rows)


def test_ia3_stacks_on_lora_and_keeps_backbone_keys(tmp_path: Path) -> None:
    """LoRA first, then IA3 on the same packed linear: both act; LoRA listed after is refused."""
    ex = testing.example_backbone(REGISTRY.get("backbone", "scgpt").cls, tmp_path)
    keys = set(ex.module.state_dict())
    lora = REGISTRY.instance("adapter", "lora")
    lora_cfg = lora.config_cls()
    lora.apply(ex.module, ex.surfaces(), lora_cfg)
    IA3().apply(ex.module, ex.surfaces(), IA3Config())
    names = set(ex.module.state_dict())
    assert any(".inner.lora_A_q" in n for n in names) and any(
        ".transforms.ia3_k" in n for n in names
    )

    other = testing.example_backbone(REGISTRY.get("backbone", "scgpt").cls, tmp_path / "b")
    IA3().apply(other.module, other.surfaces(), IA3Config())
    assert keys <= set(other.module.state_dict())  # the wrapped Wqkv keeps '...Wqkv.weight'
    with pytest.raises(CompatibilityError, match="not an nn.Linear") as info:
        lora.apply(other.module, other.surfaces(), lora_cfg)
    assert "list lora before" in (info.value.hint or "")
    with pytest.raises(CompatibilityError, match="'ia3_k' is already installed"):
        IA3().apply(other.module, other.surfaces(), IA3Config())


def test_select_layers_and_layer_spec() -> None:
    assert select_layers("all", 4, adapter="ia3") == [0, 1, 2, 3]
    assert select_layers("first_half", 5, adapter="ia3") == [0, 1]
    assert select_layers([2, 0], 4, adapter="ia3") == [0, 2]
    with pytest.raises(RecipeError, match=r"adapter.layers: ia3 was asked for block\(s\) \[9\]"):
        select_layers([0, 9], 4, adapter="ia3")
    with pytest.raises(RecipeError, match="selects no block"):
        select_layers("first_half", 1, adapter="ia3")
    assert IA3Config(layers=[3, 1]).layers == [1, 3]
    for bad, text in (([], "empty"), ([1, 1], "duplicates"), ([-1], ">= 0")):
        with pytest.raises(ValueError, match=text):
            IA3Config(layers=bad)


def test_group_projections_names_the_missing_target(tmp_path: Path) -> None:
    empty = Surfaces(hidden_size=4, input_embedding=None, blocks=())
    assert group_projections(empty, ["k"], layers=[], adapter="ia3") == []
    toy = testing.example_backbone(testing.ToyBackbone, tmp_path)
    with pytest.raises(CompatibilityError, match=r"adapter.targets: ia3 target 'k' .* block 0"):
        group_projections(toy.surfaces(), ["k"], layers=[0], adapter="ia3")
