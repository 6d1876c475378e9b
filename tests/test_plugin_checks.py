"""``sctune.testing``'s contract checker: every built-in passes; broken plugins are listed.

The checker is what a plugin author runs (``testing.check_adapter(MyAdapter)``); the built-ins
(and the test-only ``toy`` backbone) must pass it, and each broken promise must appear as one
readable line of a single ``PluginCheckError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn

from sctune import testing
from sctune.core.adapter import Adapter, AdapterHandle
from sctune.core.capabilities import Capability
from sctune.core.config import PluginConfig
from sctune.core.surfaces import BlockSurfaces, Surfaces, TransformSlot

REGISTRY = testing.registry_with(testing.ToyBackbone)
BUILTIN = testing.registry_with()


def _params(kind: str) -> list[Any]:
    return [pytest.param(n, id=n) for n in BUILTIN.names(kind)]


@pytest.mark.parametrize("name", [*_params("backbone"), pytest.param("toy", id="toy")])
def test_every_backbone_passes(name: str, tmp_path: Path) -> None:
    testing.check_backbone(REGISTRY.get("backbone", name).cls, workdir=tmp_path)


@pytest.mark.parametrize("name", _params("adapter"))
def test_every_adapter_passes_on_every_backbone_it_fits(name: str, tmp_path: Path) -> None:
    testing.check_adapter(BUILTIN.get("adapter", name).cls, registry=REGISTRY, workdir=tmp_path)


@pytest.mark.parametrize("name", _params("task"))
def test_every_task_passes(name: str) -> None:
    testing.check_task(BUILTIN.get("task", name).cls)


# --------------------------------------------------------------------------- broken plugins


class SloppyConfig(PluginConfig):
    width: int = 4  # no description


class Sloppy(Adapter):
    """Keeps one tensor outside the module and creates another it does not list."""

    name: ClassVar[str] = "sloppy"
    config_cls: ClassVar[type[PluginConfig]] = SloppyConfig
    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.INPUT_EMBEDDING})
    description: ClassVar[str] = "a broken adapter"

    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        layer = nn.Linear(surfaces.hidden_size, surfaces.hidden_size)
        assert surfaces.input_embedding is not None
        surfaces.input_embedding.adapters.append(layer)
        outside = nn.Parameter(torch.zeros(3))
        return AdapterHandle("sloppy", [layer.weight, outside], merge=lambda: None)


def test_a_broken_adapter_gets_one_line_per_problem(tmp_path: Path) -> None:
    with pytest.raises(testing.PluginCheckError) as info:
        testing.check_adapter(Sloppy, backbones=[testing.ToyBackbone], workdir=tmp_path)
    text = str(info.value)
    assert text.startswith("plugin contract check failed")
    expected = [
        "options without Field(description=...): width",
        "tensors that are not parameters of the module",
        "new parameters missing from handle.parameters: ['input_slot.adapters.0.bias']",
        "handle.merge and handle.unmerge must be given together",
    ]
    for line in expected:
        assert any(line in f for f in info.value.failures), (line, info.value.failures)
    assert all(f.startswith("adapter 'sloppy'") for f in info.value.failures)


def test_an_adapter_that_fits_no_backbone_is_reported() -> None:
    class Lonely(Sloppy):
        name: ClassVar[str] = "lonely"
        requires: ClassVar[frozenset[Capability]] = frozenset({Capability.PROMPT_TOKENS})

    with pytest.raises(testing.PluginCheckError, match="no backbone to check on"):
        testing.check_adapter(Lonely, backbones=[testing.ToyBackbone])


def _toy_subclass(**attrs: Any) -> type:
    return type("Broken", (testing.ToyBackbone,), {"name": "broken", **attrs})


def test_a_backbone_that_overpromises_is_reported(tmp_path: Path) -> None:
    provides = testing.ToyBackbone.provides | {Capability.PROJECTIONS}

    def surfaces(self: Any, module: nn.Module) -> Surfaces:
        return Surfaces(
            hidden_size=module.hidden_size,
            input_embedding=TransformSlot(),  # not inside the module: never called
            blocks=(BlockSurfaces(attention_output=module.block_slot),),
        )

    broken = _toy_subclass(provides=provides, surfaces=surfaces)
    with pytest.raises(testing.PluginCheckError) as info:
        testing.check_backbone(broken, workdir=tmp_path)
    failures = "\n".join(info.value.failures)
    assert "'provides' declares projections, but surfaces() does not give it" in failures
    assert "input_embedding slot is not a submodule" in failures

    def build(self: Any, config: Any, *, load_weights: bool = True) -> nn.Module:
        module = testing.ToyBackbone.build(self, config, load_weights=load_weights)
        module.spare = TransformSlot()  # inside the module, but forward never calls it
        return module

    def spare_surfaces(self: Any, module: nn.Module) -> Surfaces:
        return Surfaces(
            hidden_size=module.hidden_size,
            input_embedding=module.spare,
            blocks=(BlockSurfaces(attention_output=module.block_slot),),
        )

    unwired = _toy_subclass(build=build, surfaces=spare_surfaces)
    with pytest.raises(testing.PluginCheckError) as info:
        testing.check_backbone(unwired, workdir=tmp_path / "spare")
    assert info.value.failures == [
        "backbone 'broken': input_embedding is not on the forward path (attaching a transform "
        "there changes nothing)"
    ]


def test_the_old_resolve_signature_is_reported(tmp_path: Path) -> None:
    def resolve(self: Any, config: Any, *, genes: Any, run_dir: Path) -> Any:
        return config

    with pytest.raises(testing.PluginCheckError) as info:
        testing.check_backbone(_toy_subclass(resolve=resolve), workdir=tmp_path)
    assert (
        "resolve() must take the keywords genes, run_dir and expression (missing: expression)"
        in (str(info.value))
    )


def test_a_task_with_undeclared_metrics_and_lossy_state_is_reported() -> None:
    base = BUILTIN.get("task", "cell_type").cls

    class Forgetful(base):  # type: ignore[misc, valid-type]
        name: ClassVar[str] = "forgetful"
        monitors: ClassVar[dict[str, Any]] = {}

        def validation_metrics(self, logits: Any, targets: Any, prepared: Any, config: Any) -> Any:
            return {"accuracy": float(np.mean(logits.argmax(1) == targets))}

        def state(self, prepared: Any) -> dict[str, Any]:
            return {}

        def from_state(self, state: dict[str, Any]) -> Any:
            raise KeyError("classes")

    with pytest.raises(testing.PluginCheckError) as info:
        testing.check_task(Forgetful)
    failures = "\n".join(info.value.failures)
    assert "validation metrics not declared in 'monitors': ['valid/accuracy']" in failures
    assert "from_state(state) raised KeyError" in failures


def test_check_plugin_dispatches_and_collects(tmp_path: Path) -> None:
    testing.check_plugin(testing.ToyBackbone, workdir=tmp_path)

    class NotAPlugin:
        pass

    class Nameless(Sloppy):
        name: ClassVar[str] = "has space"

    with pytest.raises(testing.PluginCheckError) as info:
        testing.check_plugin(NotAPlugin, Nameless, workdir=tmp_path)
    failures = info.value.failures
    assert any("not a Backbone, Adapter or Task subclass" in f for f in failures)
    assert any("'name' must be a string of letters" in f for f in failures)


class DocumentedConfig(PluginConfig):
    scale: float = Field(1.0, description="a documented option")


def test_config_rules_are_checked() -> None:
    class Loose(DocumentedConfig):
        model_config = {"extra": "allow", "frozen": True}

    class Fine(Sloppy):
        name: ClassVar[str] = "loose"
        config_cls: ClassVar[type[PluginConfig]] = Loose

    with pytest.raises(testing.PluginCheckError, match="extra='forbid' and frozen=True"):
        testing.check_adapter(Fine, backbones=[testing.ToyBackbone])
