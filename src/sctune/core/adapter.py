"""The adapter contract: new trainable tensors attached through a backbone's insertion points.

Besides :class:`Adapter` and :class:`AdapterHandle`, this module holds the torch-free helpers an
adapter's options need (importable when plugins are listed):

- :data:`LayerSpec`: the type of a ``layers`` option (``"all"``, ``"first_half"`` or a list of
  block indices), validated on its own wherever it is used;
- :func:`select_layers`: resolve a :data:`LayerSpec` against the backbone's real block count.

The helpers that touch modules (placement of new tensors, grouping projection sites by the linear
they share, wrapping row slices of a packed linear) are in :mod:`sctune.core.surfaces`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator

from sctune.core.errors import RecipeError

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


# --------------------------------------------------------------------------- block selection


def check_layer_spec(value: Any) -> Any:
    """Validator of :data:`LayerSpec`: a list must be non-empty, unique and non-negative (sorted).

    ``"all"`` and ``"first_half"`` pass unchanged. Raises ``ValueError`` (pydantic reports it at
    the option's recipe key).
    """
    if isinstance(value, list):
        if not value:
            raise ValueError("layer list is empty; give at least one block index, or 'all'")
        if len(set(value)) != len(value):
            raise ValueError(f"layer list has duplicates: {value}")
        if min(value) < 0:
            raise ValueError(f"layer indices must be >= 0, got {value}")
        return sorted(value)
    return value


LayerSpec = Annotated[Literal["all", "first_half"] | list[int], AfterValidator(check_layer_spec)]
"""Which encoder blocks an adapter acts on: ``"all"``, ``"first_half"`` (blocks ``0 .. n//2 - 1``)
or a list of block indices. Use it as a pydantic field type (``layers: LayerSpec = "all"``); the
list checks come with the type. The real block count is known only when the adapter is applied:
resolve it there with :func:`select_layers`."""


def select_layers(
    spec: Literal["all", "first_half"] | list[int],
    n_blocks: int,
    *,
    adapter: str,
    key: str = "adapter.layers",
) -> list[int]:
    """Resolve a :data:`LayerSpec` against a backbone with ``n_blocks`` blocks.

    Call it in :meth:`Adapter.apply` with ``len(surfaces.blocks)``.

    Parameters
    ----------
    spec
        The option's value.
    n_blocks
        The number of blocks of the module being adapted.
    adapter
        The adapter's name, shown in the error.
    key
        The recipe key of the option, shown in the error.

    Returns
    -------
    list[int]
        The block indices, ascending.

    Raises
    ------
    RecipeError
        When an index does not exist on this backbone or the selection is empty.
    """
    if spec == "all":
        layers = list(range(n_blocks))
    elif spec == "first_half":
        layers = list(range(n_blocks // 2))
    else:
        bad = [i for i in spec if i >= n_blocks]
        if bad:
            raise RecipeError(
                f"{key}: {adapter} was asked for block(s) {bad}, but this backbone has "
                f"{n_blocks} block(s) (indices 0..{n_blocks - 1})",
                hint="use indices below the block count, or 'all' / 'first_half'",
            )
        layers = sorted(spec)
    if not layers:
        raise RecipeError(
            f"{key}: '{spec}' selects no block on a backbone with {n_blocks} block(s)",
            hint="use 'all' or an explicit list of block indices",
        )
    return layers
