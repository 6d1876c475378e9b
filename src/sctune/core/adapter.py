"""The adapter contract: new trainable tensors attached through a backbone's insertion points."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import nn

    from sctune.core.capabilities import Capability
    from sctune.core.config import PluginConfig
    from sctune.core.surfaces import Surfaces


@dataclass
class AdapterHandle:
    """What :meth:`Adapter.apply` returns.

    ``parameters`` lists every tensor this adapter trains: the ones it created and any backbone
    tensor it unfreezes (e.g. LoRA's packed QKV bias). The engine freezes the whole backbone first
    and then enables exactly these, so the trainable set never depends on parameter names.
    ``merge``/``unmerge`` fold the adapter into the backbone weights for inference and back.
    """

    name: str
    parameters: list[nn.Parameter]
    merge: Callable[[], None] | None = None
    unmerge: Callable[[], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Adapter(ABC):
    """A way to adapt a frozen backbone.

    Class attributes
    ----------------
    name, config_cls, description
        As for backbones.
    requires
        Capabilities the backbone must provide (an empty set fits every backbone).
    trains
        ``False`` for methods with no gradient training (``zero_shot``: kNN on frozen embeddings).
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[PluginConfig]]
    requires: ClassVar[frozenset[Capability]] = frozenset()
    description: ClassVar[str] = ""
    trains: ClassVar[bool] = True

    @abstractmethod
    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        """Attach the adapter to ``module`` through ``surfaces`` and return its handle.

        Called on a freshly built, fully frozen backbone module. Must not depend on which backbone
        it is; only on ``surfaces``.
        """
