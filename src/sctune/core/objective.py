"""Token-level objectives: a backbone's own masked modelling, and heads that read every token.

Two declared contracts, no names:

- :class:`MaskedModelling` - what a backbone's pretraining objective is (scGPT: masked expression
  values, MSE; Geneformer: masked rank-value tokens, cross-entropy over the vocabulary; scBERT:
  masked expression bins, cross-entropy). A backbone offers it through
  :meth:`sctune.core.backbone.Backbone.masked_modelling`; it knows which input field to corrupt,
  with which mask value, and owns the decoder (with the parameter names of the real checkpoint, so
  a pretraining run can write them back).
- :class:`EncoderHead` - a task head that reads the encoder's per-token outputs (not only the cell
  embedding) and may corrupt the inputs first. A task whose :attr:`~sctune.core.task.Task.head_input`
  is ``"encoder"`` returns one from :meth:`~sctune.core.task.Task.head`; the engine attaches the
  backbone's :class:`MaskedModelling` when the head asks for it (:attr:`EncoderHead.masked_modelling`).

The engine's model (:class:`sctune.core.assembly.CellModel`) corrupts in training; in evaluation it
encodes the clean cells (the embedding that is exported) and, when the head asks for it, also a
corrupted copy whose masks come from a fixed seed, so validation scores are comparable between
epochs and ``sctune predict`` on the same cells in the same order reproduces the run.

Heads return one fixed-width tensor per cell, so per-token objectives are reduced to per-cell
columns inside the head (e.g. the summed masked loss and the number of masked positions) and the
task's loss divides them; validation concatenates cells across batches and processes as for any
task.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from sctune.core.cells import EncoderOutput

if TYPE_CHECKING:
    from sctune.core.surfaces import Surfaces

EVAL_MASK_SEED = 20240517
"""Seed of the masks drawn in evaluation (validation, test, ``sctune predict``)."""


@dataclass
class Masked:
    """A corrupted batch: the inputs the encoder sees, and what the objective must recover.

    ``positions`` (bool, ``(B, L)``) marks the masked tokens, aligned with the encoder's per-token
    outputs; ``target`` holds the original values (float) or token ids (long) there.
    """

    batch: dict[str, torch.Tensor]
    positions: torch.Tensor
    target: torch.Tensor


class MaskedModelling(nn.Module):
    """A backbone's masked pretraining objective: corrupt, decode per token, score per cell.

    Class attributes
    ----------------
    kind
        ``"regression"`` (a value per token, MSE) or ``"classification"`` (a token class,
        cross-entropy; accuracy is reported too).
    default_ratio
        The fraction of eligible tokens masked in the backbone's own pretraining.
    description
        One line for docs and ``sctune inspect`` (what is masked, what is predicted).
    """

    kind: ClassVar[Literal["regression", "classification"]]
    loaded_from_checkpoint: bool = False
    """Set by the backbone when the decoder's weights came from the pretrained checkpoint."""
    default_ratio: ClassVar[float] = 0.15
    description: ClassVar[str] = ""

    @abstractmethod
    def mask(
        self, batch: dict[str, torch.Tensor], ratio: float, generator: torch.Generator | None
    ) -> Masked:
        """Corrupt ``ratio`` of each cell's eligible tokens (never padding or special tokens);
        at least one per cell that has any. Must not modify ``batch`` in place."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predictions from per-token outputs ``(B, L, d)``: ``(B, L)`` values or ``(B, L, C)``
        logits."""

    def per_cell(
        self, prediction: torch.Tensor, masked: Masked
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per cell: summed loss over masked tokens, their count, and the number predicted right
        (classification; NaN for regression), from predictions at every position. All float,
        shape ``(B,)``."""
        cell, where = masked.positions.nonzero(as_tuple=True)
        return self._per_cell(prediction[cell, where], masked, cell, where)

    def score(
        self, tokens: torch.Tensor, masked: Masked
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`per_cell` of the decoded per-token outputs ``(B, L, d)``, decoding only the
        masked positions (a decoder over Geneformer's 25,426-token vocabulary costs the same
        for every position it sees; most are not masked)."""
        cell, where = masked.positions.nonzero(as_tuple=True)
        prediction = self.decode(tokens[cell, where].unsqueeze(0)).squeeze(0)
        return self._per_cell(prediction, masked, cell, where)

    def _per_cell(
        self, prediction: torch.Tensor, masked: Masked, cell: torch.Tensor, where: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sums per cell of the losses of the masked positions ``(cell, where)``, whose
        predictions (values or logits) ``prediction`` holds in that order."""
        target = masked.target[cell, where]
        zeros = torch.zeros(masked.positions.shape[0], dtype=torch.float32, device=cell.device)
        count = zeros.index_add(0, cell, torch.ones_like(cell, dtype=torch.float32))
        if self.kind == "regression":
            err = (prediction.float() - target.float()) ** 2
            correct = torch.full_like(zeros, float("nan"))
        else:
            logits = prediction.float()
            label = target.long().clamp_min(0)
            err = nn.functional.cross_entropy(logits, label, reduction="none")
            hit = (logits.argmax(-1) == label).to(torch.float32)
            correct = zeros.index_add(0, cell, hit)
        return zeros.index_add(0, cell, err), count, correct

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The decoder's tensors under the names the backbone's real checkpoint uses (written
        back by a pretraining run). Default: none."""
        return {}


def draw_positions(
    eligible: torch.Tensor, ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    """``round(ratio * n)`` (at least 1 where ``n > 0``) random positions per row among
    ``eligible`` (bool ``(B, L)``), without replacement."""
    scores = torch.rand(eligible.shape, generator=generator, device="cpu").to(eligible.device)
    scores = scores.masked_fill(~eligible, 2.0)
    n = eligible.sum(1)
    k = torch.where(n > 0, (n.float() * ratio).round().clamp_min(1), torch.zeros_like(n.float()))
    rank = scores.argsort(1).argsort(1)
    return (rank < k.long().unsqueeze(1)) & eligible


class EncoderHead(nn.Module):
    """A task head over the encoder output (cell embedding and per-token outputs).

    ``masked_modelling=True`` when the head needs the backbone's :class:`MaskedModelling`: the
    engine then calls :meth:`attach` once after building the head (the task declares
    ``Capability.MASKED_MODELLING`` in ``Task.requires_for`` so validate refuses backbones that
    offer none). ``mask_ratio`` is the fraction masked (``None``: the backbone's default).
    ``reads_cell_embedding=False`` (a pretraining head) leaves the backbone's fresh modules
    (pooler, scBERT's stem), which only feed the cell embedding, untrained. A head that acts
    inside the backbone (a per-batch norm of the input embedding) installs itself in
    :meth:`bind`.
    """

    objective: MaskedModelling | None

    def __init__(
        self,
        *,
        masked_modelling: bool = False,
        mask_ratio: float | None = None,
        reads_cell_embedding: bool = True,
    ) -> None:
        super().__init__()
        self.masked_modelling = masked_modelling
        self.reads_cell_embedding = reads_cell_embedding
        self.objective = None
        self.mask_ratio = mask_ratio

    def attach(self, objective: MaskedModelling) -> None:
        """Receive the backbone's objective (a submodule from then on: trained and saved with the
        head)."""
        self.objective = objective
        if self.mask_ratio is None:
            self.mask_ratio = objective.default_ratio

    def bind(self, module: nn.Module, surfaces: Surfaces) -> None:
        """Install what the head needs inside the backbone; default: nothing.

        :func:`sctune.core.assembly.assemble` calls it once, after the adapters were applied, with
        the built backbone ``module`` and its insertion points. A head may register forward hooks
        on a slot of ``surfaces`` (and a forward pre-hook on ``module``, which receives each batch
        dict, including the task's :meth:`~sctune.core.task.Task.model_inputs` fields). Rules: the
        tensors it adds are the head's own submodules (trained and saved with the head), never
        attributes of ``module``, so the backbone's ``state_dict`` keys do not change; it never
        stores ``module`` as an attribute (that would register the backbone inside the head);
        the task declares the insertion point in ``Task.requires_for`` so validate refuses
        backbones without it, and the head raises ``CompatibilityError`` if it is missing.
        """

    def corrupt(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None) -> Masked:
        if self.objective is None:
            raise RuntimeError("this head has no masked-modelling objective attached")
        return self.objective.mask(batch, float(self.mask_ratio or 0.0), generator)

    @abstractmethod
    def forward(
        self, out: EncoderOutput, batch: dict[str, torch.Tensor], masked: Masked | None
    ) -> torch.Tensor:
        """Per-cell outputs ``(B, k)`` from the encoder output of ``batch``. ``masked`` is the
        corruption that ``batch`` went through (``None`` for clean inputs)."""

    def merge(self, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """Evaluation: combine the head outputs of the clean cells and of their corrupted copy
        (only called when ``masked_modelling`` is set). Default: the corrupted outputs."""
        return corrupted
