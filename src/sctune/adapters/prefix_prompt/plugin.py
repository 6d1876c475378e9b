"""Plugin entry for ``prefix_prompt`` (torch is imported only inside :meth:`apply`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sctune import hookimpl
from sctune.adapters.prefix_prompt.config import PrefixPromptConfig
from sctune.core.adapter import Adapter, AdapterHandle
from sctune.core.capabilities import Capability
from sctune.core.errors import CompatibilityError

if TYPE_CHECKING:
    from torch import nn

    from sctune.core.config import PluginConfig
    from sctune.core.surfaces import Surfaces


class PrefixPrompt(Adapter):
    """scPEFT prefix prompt: a ``(T, d)`` prompt tensor in the prompt slot of each chosen block.

    The backbone inserts the tokens at the first prompted block, replaces them at later prompted
    blocks, extends the padding mask and strips them before pooling (``core.surfaces``).
    """

    name: ClassVar[str] = "prefix_prompt"
    config_cls: ClassVar[type[PluginConfig]] = PrefixPromptConfig
    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.PROMPT_TOKENS})
    description: ClassVar[str] = (
        "scPEFT prefix prompt: 64 learned tokens per block, inserted before attention, "
        "replaced per block and stripped at the end"
    )

    def apply(self, module: nn.Module, surfaces: Surfaces, config: PluginConfig) -> AdapterHandle:
        from sctune.adapters.prefix_prompt.layer import prompt_tokens
        from sctune.core.adapter import select_layers
        from sctune.core.surfaces import placement

        assert isinstance(config, PrefixPromptConfig)
        layers = select_layers(config.layers, len(surfaces.blocks), adapter=self.name)
        for i in layers:
            slot = surfaces.blocks[i].prompt
            if slot is None:
                raise CompatibilityError(
                    f"adapter '{self.name}' needs capability '{Capability.PROMPT_TOKENS}' on "
                    f"block {i}, but the backbone's surfaces have no prompt slot there"
                )
            if slot.prompts is not None:
                raise CompatibilityError(
                    f"adapter '{self.name}': block {i} already holds prompt tokens; apply one "
                    f"prompt adapter per model"
                )
        device, dtype = placement(module)
        params = []
        for i in layers:
            prompts = prompt_tokens(
                config.num_tokens,
                surfaces.hidden_size,
                init=config.init,
                device=device,
                dtype=dtype,
            )
            surfaces.blocks[i].prompt.set(prompts)
            params.append(prompts)
        return AdapterHandle(
            name=self.name,
            parameters=params,
            info={
                "layers": layers,
                "num_tokens": config.num_tokens,
                "n_parameters": sum(p.numel() for p in params),
            },
        )


@hookimpl
def sctune_register_adapters() -> list[type[Adapter]]:
    return [PrefixPrompt]
