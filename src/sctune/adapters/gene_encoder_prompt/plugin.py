"""Plugin entry for ``gene_encoder_prompt`` (torch is imported only inside :meth:`apply`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sctune import hookimpl
from sctune.adapters.gene_encoder_prompt.config import GeneEncoderPromptConfig
from sctune.core.adapter import Adapter, AdapterHandle
from sctune.core.capabilities import Capability
from sctune.core.errors import CompatibilityError

if TYPE_CHECKING:
    from torch import nn

    from sctune.core.config import PluginConfig
    from sctune.core.surfaces import Surfaces


class GeneEncoderPrompt(Adapter):
    """scPEFT gene encoder prompt.

    In each selected block: a residual "Space" bottleneck in the ``attention_output`` slot and,
    with ``mlp_adapter``, a non-residual bottleneck scaled by ``scale`` in the ``ffn_parallel``
    slot (fed with the FFN input, added to the block output).
    """

    name: ClassVar[str] = "gene_encoder_prompt"
    config_cls: ClassVar[type[PluginConfig]] = GeneEncoderPromptConfig
    requires: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ATTENTION_OUTPUT, Capability.FFN_PARALLEL}
    )
    description: ClassVar[str] = (
        "scPEFT gene encoder prompt: residual bottleneck after attention plus a parallel "
        "bottleneck beside the FFN (x0.5), first half of the blocks"
    )

    @classmethod
    def requires_for(cls, config: PluginConfig) -> frozenset[Capability]:
        """Capabilities this configuration needs (``ffn_parallel`` only with the MLP adapter)."""
        if isinstance(config, GeneEncoderPromptConfig) and not config.mlp_adapter:
            return frozenset({Capability.ATTENTION_OUTPUT})
        return cls.requires

    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        from sctune.adapters.gene_encoder_prompt.layer import mlp_adapter, space_adapter
        from sctune.core.adapter import select_layers
        from sctune.core.surfaces import placement

        assert isinstance(config, GeneEncoderPromptConfig)
        layers = select_layers(config.layers, len(surfaces.blocks), adapter=self.name)
        for i in layers:
            block = surfaces.blocks[i]
            missing = []
            if block.attention_output is None:
                missing.append(str(Capability.ATTENTION_OUTPUT))
            if config.mlp_adapter and block.ffn_parallel is None:
                missing.append(str(Capability.FFN_PARALLEL))
            if missing:
                raise CompatibilityError(
                    f"adapter '{self.name}' needs {', '.join(repr(m) for m in missing)} on block "
                    f"{i}, but the backbone's surfaces do not provide it",
                    hint="set 'mlp_adapter: false' to use the attention-output adapter only"
                    if missing == [str(Capability.FFN_PARALLEL)]
                    else None,
                )
        device, dtype = placement(module)
        d, params = surfaces.hidden_size, []
        for i in layers:
            block = surfaces.blocks[i]
            space = space_adapter(d, config.mlp_ratio, zero_init=config.zero_init)
            block.attention_output.adapters.append(space.to(device=device, dtype=dtype))
            params += list(space.parameters())
            if config.mlp_adapter:
                mlp = mlp_adapter(
                    d, config.mlp_ratio, scale=config.scale, zero_init=config.zero_init
                )
                block.ffn_parallel.branches.append(mlp.to(device=device, dtype=dtype))
                params += list(mlp.parameters())
        return AdapterHandle(
            name=self.name,
            parameters=params,
            info={
                "layers": layers,
                "adapters_per_layer": 2 if config.mlp_adapter else 1,
                "n_parameters": sum(p.numel() for p in params),
            },
        )


@hookimpl
def sctune_register_adapters() -> list[type[Adapter]]:
    return [GeneEncoderPrompt]
