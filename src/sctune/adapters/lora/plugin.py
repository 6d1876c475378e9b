"""Plugin entry for ``lora`` (torch is imported only inside :meth:`apply`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sctune import hookimpl
from sctune.adapters.lora.config import LoRAConfig
from sctune.core.adapter import Adapter, AdapterHandle
from sctune.core.capabilities import Capability
from sctune.core.errors import CompatibilityError

if TYPE_CHECKING:
    from torch import nn

    from sctune.core.config import PluginConfig
    from sctune.core.surfaces import Surfaces


class LoRA(Adapter):
    """LoRA through the backbone's projection sites.

    The chosen sites of each block are grouped by the linear they live in
    (:func:`sctune.core.surfaces.group_projections`); each such linear is replaced by one
    :class:`~.layer.LoRALinear` holding an ``A``/``B`` pair per target, so packed projections
    (scGPT's ``Wqkv``) get Q and V updates on their own row slices and K stays untouched.
    """

    name: ClassVar[str] = "lora"
    config_cls: ClassVar[type[PluginConfig]] = LoRAConfig
    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.PROJECTIONS})
    description: ClassVar[str] = (
        "LoRA (r 8, alpha 1) on the Q and V attention projections of every block, packed "
        "projections included; trains the wrapped biases like scPEFT"
    )

    def merge_for_inference(self, config: PluginConfig) -> bool:
        assert isinstance(config, LoRAConfig)
        return config.merge

    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        from torch import nn

        from sctune.adapters.lora.layer import LoRALinear
        from sctune.core.adapter import select_layers
        from sctune.core.surfaces import group_projections

        assert isinstance(config, LoRAConfig)
        layers = select_layers(config.layers, len(surfaces.blocks), adapter=self.name)
        groups = group_projections(surfaces, config.targets, layers=layers, adapter=self.name)
        wrappers: list[LoRALinear] = []
        for group in groups:
            base = group.module
            if isinstance(base, LoRALinear):
                raise CompatibilityError(
                    f"adapter '{self.name}': projection '{group.attr}' already carries LoRA; "
                    f"apply one lora adapter per model"
                )
            if not isinstance(base, nn.Linear):
                raise CompatibilityError(
                    f"adapter '{self.name}': projection '{group.attr}' is a "
                    f"{type(base).__name__}, not an nn.Linear; the backbone's surfaces must "
                    f"expose plain linears",
                    hint="list lora before other adapters that wrap the same projections",
                )
            wrapper = LoRALinear(
                base, group.slices(), rank=config.rank, alpha=config.alpha, dropout=config.dropout
            )
            group.install(wrapper)
            wrappers.append(wrapper)
        params: list[nn.Parameter] = [p for w in wrappers for p in w.lora_parameters()]
        n_low_rank = sum(p.numel() for p in params)
        if config.train_bias:
            params += [w.bias for w in wrappers if w.bias is not None]

        def merge() -> None:
            for w in wrappers:
                w.merge()

        def unmerge() -> None:
            for w in wrappers:
                w.unmerge()

        return AdapterHandle(
            name=self.name,
            parameters=params,
            merge=merge,
            unmerge=unmerge,
            info={
                "layers": layers,
                "targets": list(config.targets),
                "rank": config.rank,
                "scale": config.alpha / config.rank,
                "wrapped_linears": len(wrappers),
                "n_low_rank": n_low_rank,
                "n_parameters": sum(p.numel() for p in params),
            },
        )


@hookimpl
def sctune_register_adapters() -> list[type[Adapter]]:
    return [LoRA]
