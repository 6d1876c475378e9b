"""Assemble backbone + adapters + head into one trainable model, with an exact trainable set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from sctune.core.adapter import AdapterHandle
from sctune.core.errors import CompatibilityError
from sctune.core.objective import EVAL_MASK_SEED, EncoderHead


class CellModel(nn.Module):
    """``backbone`` (frozen except what adapters enable) + task ``head`` on the cell embedding."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cell embedding, head outputs)``.

        A cell head reads the cell embedding. An :class:`~sctune.core.objective.EncoderHead`
        reads the whole encoder output; when it has a masked-modelling objective, training
        encodes a corrupted copy only (as in the backbones' own pretraining), and evaluation
        encodes the clean cells (the exported embedding) plus a copy corrupted with masks of a
        fixed seed, combined by :meth:`EncoderHead.merge`. ``batch`` may also hold the task's
        :meth:`~sctune.core.task.Task.model_inputs` fields (backbones ignore fields they do not
        read; the corrupted copies keep them).
        """
        head = self.head
        if not isinstance(head, EncoderHead):
            out = self.backbone(batch)
            return out.cell, head(out.cell)
        if not head.masked_modelling:
            out = self.backbone(batch)
            return out.cell, head(out, batch, None)
        if self.training:
            masked = head.corrupt(batch, None)
            out = self.backbone(masked.batch)
            return out.cell, head(out, masked.batch, masked)
        clean = self.backbone(batch)
        gen = torch.Generator().manual_seed(EVAL_MASK_SEED)
        masked = head.corrupt(batch, gen)
        corrupted = self.backbone(masked.batch)
        return clean.cell, head.merge(
            head(clean, batch, None), head(corrupted, masked.batch, masked)
        )


@dataclass
class Assembled:
    model: CellModel
    handles: list[AdapterHandle]
    trainable: dict[str, nn.Parameter] = field(default_factory=dict)
    adapter_names: list[str] = field(default_factory=list)  # parameters saved as "adapter"
    head_names: list[str] = field(default_factory=list)  # head + fresh backbone modules
    fresh_modules: tuple[str, ...] = ()  # backbone submodules that belong with the head
    base_buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # at build time, by id

    def saved_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every tensor that affects outputs and is not the pretrained backbone as built.

        ``{"adapter": ..., "head": ...}``, keyed by ``model.state_dict()`` names: the trainable
        parameters, plus the persistent buffers of the head, of fresh modules and of modules the
        adapters added (BatchNorm running statistics and the like), plus any backbone buffer whose
        value changed since it was built. Loading both into a freshly assembled model reproduces
        the trained one exactly.
        """
        state = self.model.state_dict(keep_vars=True)
        buffers = {id(b): n for n, b in self.model.named_buffers()}
        out: dict[str, dict[str, torch.Tensor]] = {"adapter": {}, "head": {}}
        for n in self.adapter_names:
            out["adapter"][n] = state[n]
        for n in self.head_names:
            out["head"][n] = state[n]
        heads = ("head.", *(f"backbone.{m}." for m in self.fresh_modules))
        for name, tensor in state.items():
            if name in out["adapter"] or name in out["head"]:
                continue
            if name.startswith(heads):  # fresh: every tensor, trained or not
                out["head"][name] = tensor
                continue
            if id(tensor) not in buffers:
                continue
            before = self.base_buffers.get(f"{id(tensor)}")
            if before is None or not torch.equal(before, tensor.detach().cpu()):
                out["adapter"][name] = tensor
        return out

    adapters: list[tuple[Any, Any]] = field(default_factory=list)  # (plugin, config), as handles

    def merged_for_inference(self) -> list[AdapterHandle]:
        """Handles whose adapter asks to be folded into the weights for inference."""
        return [
            h
            for h, (plugin, cfg) in zip(self.handles, self.adapters)
            if h.merge is not None and plugin.merge_for_inference(cfg)
        ]


def assemble(
    backbone_plugin: Any,
    backbone_cfg: Any,
    adapters: list[tuple[Any, Any]],
    task: Any,
    task_cfg: Any,
    prepared: Any,
    *,
    load_weights: bool = True,
    module: nn.Module | None = None,
) -> Assembled:
    """Build the backbone, freeze it, apply each adapter, add the head; return the exact trainable set."""
    if module is None:
        module = backbone_plugin.build(backbone_cfg, load_weights=load_weights)
    for p in module.parameters():
        p.requires_grad_(False)
    base_buffers = {
        f"{id(b)}": b.detach().cpu().clone() for b in module.buffers() if not b.is_meta
    }
    surfaces = backbone_plugin.surfaces(module)
    handles = []
    for plugin, cfg in adapters:
        requires = plugin.requires_for(cfg)
        missing = set(requires) - set(surfaces.provides())
        if missing:
            raise CompatibilityError(
                f"adapter '{plugin.name}' needs {', '.join(sorted(map(str, missing)))}, which this "
                f"'{backbone_plugin.name}' module does not provide"
            )
        handles.append(plugin.apply(module, surfaces, cfg))
    head = task.head(int(cast(Any, module).hidden_size), prepared, task_cfg)
    if isinstance(head, EncoderHead) and head.masked_modelling:
        objective = backbone_plugin.masked_modelling(module, backbone_cfg)
        if objective is None:
            raise CompatibilityError(
                f"task '{task.name}' trains the backbone's masked-modelling objective, which "
                f"backbone '{backbone_plugin.name}' does not offer"
            )
        head.attach(objective)
    if isinstance(head, EncoderHead):  # after the adapters: a head may hook an insertion point
        head.bind(module, surfaces)
    # fresh modules (a pooler, scBERT's stem) feed the cell embedding: trained unless the head
    # never reads it (a pretraining head reads per-token outputs only)
    reads_cell = not isinstance(head, EncoderHead) or head.reads_cell_embedding
    every_fresh = tuple(getattr(module, "fresh_modules", ()))
    fresh = every_fresh if reads_cell else ()
    unused = () if reads_cell else every_fresh
    # Tensors the backbone declares never trainable (scBERT's fixed gene2vec position table), and
    # fresh modules a head never reads: re-frozen after every adapter ran and dropped from each
    # handle, so even 'full' leaves them.
    frozen_ids = {id(module.get_parameter(n)) for n in getattr(module, "always_frozen", ())}
    frozen_ids |= {id(p) for m in unused for p in module.get_submodule(m).parameters()}
    for p in module.parameters():
        if id(p) in frozen_ids:
            p.requires_grad_(False)
    enabled: set[int] = set()
    for h in handles:
        h.parameters = [p for p in h.parameters if id(p) not in frozen_ids]
        for p in h.parameters:
            p.requires_grad_(True)
            enabled.add(id(p))
    fresh_ids: set[int] = set()
    for name in fresh:
        for p in module.get_submodule(name).parameters():
            if id(p) not in frozen_ids:
                p.requires_grad_(True)
                fresh_ids.add(id(p))
    model = CellModel(module, head)
    out = Assembled(
        model,
        handles,
        fresh_modules=every_fresh,  # saved with the head even when untrained
        base_buffers=base_buffers,
        adapters=list(adapters),
    )
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        out.trainable[name] = p
        if name.startswith("head.") or id(p) in fresh_ids:
            out.head_names.append(name)
        else:
            out.adapter_names.append(name)
    return out


def count_parameters(model: nn.Module, depth: int = 2) -> list[dict[str, Any]]:
    """Total and trainable parameters per module, down to ``depth`` levels of names."""
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[: min(depth, len(parts) - 1)]) or name
        r = rows.setdefault(key, [0, 0])
        r[0] += p.numel()
        r[1] += p.numel() if p.requires_grad else 0
    return [{"module": k, "total": v[0], "trainable": v[1]} for k, v in rows.items()]
