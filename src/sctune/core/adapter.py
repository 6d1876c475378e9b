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
    exclusive
        ``True`` for a method that is the whole adaptation on its own (the baselines ``full``,
        ``head``, ``zero_shot``): it cannot be listed together with other adapters. Adapters that
        add tensors through insertion points leave it ``False`` and combine freely.

    Traits that depend on the options are methods: :meth:`requires_for`,
    :meth:`uses_cached_embeddings`, :meth:`merge_for_inference`. The engine reads only these
    declarations, never an adapter's name.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[PluginConfig]]
    requires: ClassVar[frozenset[Capability]] = frozenset()
    description: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    exclusive: ClassVar[bool] = False

    @classmethod
    def requires_for(cls, config: PluginConfig) -> frozenset[Capability]:
        """The capabilities this configuration needs; :attr:`requires` unless an option drops
        one (``gene_encoder_prompt`` without its MLP adapter needs no ``ffn_parallel``). Checked
        by ``sctune validate`` against the backbone's ``provides``."""
        return cls.requires

    def uses_cached_embeddings(self, config: PluginConfig) -> bool:
        """True when the backbone stays exactly as built (frozen, no new tensors inside), so the
        engine may embed every cell once in eval mode and train only the head on the cache."""
        return False

    def merge_for_inference(self, config: PluginConfig) -> bool:
        """True when the handle's ``merge`` should fold the adapter into the backbone weights
        for evaluation and prediction (the saved files still hold the unmerged tensors)."""
        return False

    @abstractmethod
    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        """Attach the adapter to ``module`` through ``surfaces`` and return its handle.

        Called on a freshly built, fully frozen backbone module. Must not depend on which backbone
        it is; only on ``surfaces``.
        """
