"""Plugin entry for ``gene_token_prompt`` (torch is imported only inside :meth:`apply`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sctune import hookimpl
from sctune.adapters.gene_token_prompt.config import GeneTokenPromptConfig
from sctune.core.adapter import Adapter, AdapterHandle
from sctune.core.capabilities import Capability
from sctune.core.errors import CompatibilityError

if TYPE_CHECKING:
    from torch import nn

    from sctune.core.config import PluginConfig
    from sctune.core.surfaces import Surfaces


class GeneTokenPrompt(Adapter):
    """scPEFT gene token prompt: ``x + Adapter(x)`` on the input embedding slot."""

    name: ClassVar[str] = "gene_token_prompt"
    config_cls: ClassVar[type[PluginConfig]] = GeneTokenPromptConfig
    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.INPUT_EMBEDDING})
    description: ClassVar[str] = (
        "scPEFT gene token prompt: residual bottleneck adapter on the input (expression) "
        "embedding, ratio 0.25"
    )

    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        from sctune.adapters.gene_token_prompt.layer import token_adapter
        from sctune.core.surfaces import placement

        assert isinstance(config, GeneTokenPromptConfig)
        slot = surfaces.input_embedding
        if slot is None:
            raise CompatibilityError(
                f"adapter '{self.name}' needs capability '{Capability.INPUT_EMBEDDING}', but the "
                f"backbone's surfaces have no input embedding slot"
            )
        device, dtype = placement(module)
        adapter = token_adapter(surfaces.hidden_size, config.mlp_ratio, zero_init=config.zero_init)
        adapter.to(device=device, dtype=dtype)
        slot.adapters.append(adapter)
        params = list(adapter.parameters())
        return AdapterHandle(
            name=self.name,
            parameters=params,
            info={
                "where": surfaces.notes.get(str(Capability.INPUT_EMBEDDING), "input embedding"),
                "bottleneck": [surfaces.hidden_size, adapter.down.out_features],
                "n_parameters": sum(p.numel() for p in params),
            },
        )


@hookimpl
def sctune_register_adapters() -> list[type[Adapter]]:
    return [GeneTokenPrompt]
