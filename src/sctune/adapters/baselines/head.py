"""``head``: only the task head trains; the frozen backbone's embeddings can be cached."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from sctune import hookimpl
from sctune.core.adapter import Adapter, AdapterHandle
from sctune.core.config import PluginConfig

if TYPE_CHECKING:
    from torch import nn

    from sctune.core.surfaces import Surfaces


class HeadConfig(PluginConfig):
    cache_embeddings: bool = Field(
        True,
        description="embed every cell once (eval mode) and train the head on the cached embeddings; "
        "false runs the backbone (with its dropout) every step, as scPEFT's baseline did",
    )


class HeadOnly(Adapter):
    name: ClassVar[str] = "head"
    config_cls = HeadConfig
    description: ClassVar[str] = "baseline: train the classifier head only (frozen backbone)"
    exclusive: ClassVar[bool] = True

    def uses_cached_embeddings(self, config: PluginConfig) -> bool:
        assert isinstance(config, HeadConfig)
        return config.cache_embeddings

    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        return AdapterHandle(self.name, [])


@hookimpl
def sctune_register_adapters() -> list[type[Adapter]]:
    return [HeadOnly]
