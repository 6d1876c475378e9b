"""``zero_shot``: no training; kNN label transfer from training to test cells on frozen embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sctune import hookimpl
from sctune.core.adapter import Adapter, AdapterHandle
from sctune.core.config import PluginConfig

if TYPE_CHECKING:
    from torch import nn

    from sctune.core.surfaces import Surfaces


class ZeroShotConfig(PluginConfig):
    """No options (the number of neighbours is the task's ``knn_k``)."""


class ZeroShot(Adapter):
    name: ClassVar[str] = "zero_shot"
    config_cls = ZeroShotConfig
    description: ClassVar[str] = "baseline: no training, kNN label transfer on frozen embeddings"
    trains: ClassVar[bool] = False
    exclusive: ClassVar[bool] = True

    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        return AdapterHandle(self.name, [])


@hookimpl
def sctune_register_adapters() -> list[type[Adapter]]:
    return [ZeroShot]
