"""``full``: every backbone parameter trains (the full fine-tuning baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sctune import hookimpl
from sctune.core.adapter import Adapter, AdapterHandle
from sctune.core.config import PluginConfig

if TYPE_CHECKING:
    from torch import nn

    from sctune.core.surfaces import Surfaces


class FullConfig(PluginConfig):
    """No options: the whole backbone trains with the head."""


class FullFineTune(Adapter):
    name: ClassVar[str] = "full"
    config_cls = FullConfig
    description: ClassVar[str] = "baseline: fine-tune every backbone parameter"
    exclusive: ClassVar[bool] = True

    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        return AdapterHandle(self.name, list(module.parameters()), info={"trains_backbone": True})


@hookimpl
def sctune_register_adapters() -> list[type[Adapter]]:
    return [FullFineTune]
