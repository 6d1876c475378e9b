"""The task contract: what a task reads, trains, measures and writes; the engine names no task.

A task plugin owns everything specific to its problem: the checks on its labels and split
(:meth:`Task.preflight`), its state from the training cells (:meth:`Task.prepare`), its head and
loss, the metrics it reports on validation (:meth:`Task.validation_metrics`, the names early
stopping may monitor: :attr:`Task.monitors`) and test cells (:meth:`Task.evaluate`, with its
plots), any per-cell fields its head reads inside the model (:meth:`Task.model_inputs`), its
one-line summary (:meth:`Task.summary`) and the columns it writes into
``predictions.h5ad`` and ``sctune predict``'s output (:meth:`Task.annotate`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from sctune.core.capabilities import Capability
    from sctune.core.cells import Expression
    from sctune.core.config import PluginConfig

from sctune.core.errors import DataError

Direction = Literal["min", "max"]

ALWAYS_MONITORED: dict[str, Direction] = {"valid/loss": "min", "train/loss": "min"}
"""Names early stopping can always monitor: the engine computes both losses for every task."""


@dataclass
class StepOutput:
    """One training or evaluation step: the (weighted) loss, the head outputs and the targets."""

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


@dataclass
class Preflight:
    """What a task found about its labels and the split before anything is built."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    def raise_errors(self) -> None:
        if self.errors:
            raise DataError(
                f"preflight found {len(self.errors)} problem{'s' * (len(self.errors) != 1)}\n  "
                + "\n  ".join(self.errors)
            )


class Task(ABC):
    """A downstream task (cell-type identification, batch correction, ...).

    Class attributes
    ----------------
    name, config_cls, description
        As for backbones and adapters.
    monitors
        The validation metrics :meth:`validation_metrics` returns, by the name early stopping
        uses (``valid/<key>``), each with its direction (``"max"`` or ``"min"``).
        ``valid/loss`` and ``train/loss`` are always available (:data:`ALWAYS_MONITORED`);
        ``trainer.early_stopping.monitor`` is checked against both at validate time.

    ``prepared`` is the task's own state built from the training split (label map, class
    weights); :meth:`state` / :meth:`from_state` make it JSON for the run directory.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[PluginConfig]]
    description: ClassVar[str] = ""
    monitors: ClassVar[dict[str, Direction]] = {}
    head_input: ClassVar[Literal["cell", "encoder"]] = "cell"
    """``"cell"``: :meth:`head` maps the cell embedding ``(batch, hidden)``. ``"encoder"``: it
    returns a :class:`sctune.core.objective.EncoderHead`, which reads every token's output and
    may train the backbone's masked-modelling objective; the engine then never caches
    embeddings (head-only runs the frozen backbone each step)."""
    zero_shot: ClassVar[bool] = False
    """True when :meth:`transfer` is implemented, so methods that train nothing
    (``zero_shot``) can run with this task; validate refuses the pair otherwise."""

    @classmethod
    def requires_for(cls, config: PluginConfig) -> frozenset[Capability]:
        """Capabilities the backbone must provide for this task with ``config`` (e.g.
        ``Capability.MASKED_MODELLING`` for a task that trains the backbone's masked objective);
        checked at validate time. Default: none."""
        return frozenset()

    @classmethod
    def example_config(cls) -> dict[str, object]:
        """Task options (without ``name``) for the tiny test data of :mod:`sctune.testing`
        (``tiny_adata``: labels in ``cell_type``, a pseudo-batch in ``sample``). The
        registry-driven test matrix uses them, so a new task joins it by implementing this
        when its defaults do not fit that data. Default: no options."""
        return {}

    def preflight(
        self,
        labels: np.ndarray,
        split: dict[str, np.ndarray],
        config: PluginConfig,
        *,
        obs: Any = None,
    ) -> Preflight:
        """Check the labels against the split before the model is built (errors stop the run
        and ``sctune validate``; warnings and info lines are shown). Default: no checks."""
        return Preflight()

    @abstractmethod
    def prepare(
        self,
        labels: np.ndarray,
        split: dict[str, np.ndarray],
        config: PluginConfig,
        *,
        obs: Any = None,
        expression: Expression | None = None,
    ) -> Any:
        """Build the task state from all cells and the split (statistics from training only).

        ``labels`` is the ``data.label_column`` of every cell as strings; ``obs`` the whole
        ``adata.obs`` table and ``expression`` the chosen matrix with its genes (the engine
        always passes both), for tasks that read other columns or reconstruct expression.
        """

    @abstractmethod
    def targets(
        self,
        labels: np.ndarray,
        prepared: Any,
        *,
        obs: Any = None,
        expression: Expression | None = None,
    ) -> np.ndarray:
        """One target per cell (``labels`` and ``obs`` rows in the same order): integer classes
        (``-1`` for labels unknown to the task), or floats for a regression; the engine batches
        them with their own dtype."""

    @abstractmethod
    def head(self, hidden_size: int, prepared: Any, config: PluginConfig) -> nn.Module:
        """A new head mapping the cell embedding ``(batch, hidden)`` to outputs (an
        :class:`~sctune.core.objective.EncoderHead` when :attr:`head_input` is ``"encoder"``)."""

    @abstractmethod
    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, prepared: Any, config: PluginConfig
    ) -> torch.Tensor:
        """The training loss of head outputs ``logits`` against integer ``targets``."""

    @classmethod
    def model_input_fields(cls, config: PluginConfig) -> frozenset[str]:
        """The names :meth:`model_inputs` returns with ``config``. Default: none.

        Declared so the engine knows before computing any targets whether a pass needs them:
        ``sctune predict`` computes the new cells' :meth:`targets` only when this is not empty.
        """
        return frozenset()

    def model_inputs(
        self, targets: np.ndarray, prepared: Any, config: PluginConfig
    ) -> dict[str, np.ndarray]:
        """Per-cell integer arrays (rows as ``targets``) the engine hands to the MODEL.

        Each array becomes a batch field of that name, next to the backbone's tokens, in every
        pass: training, validation, test, the embedding of every cell and ``sctune predict`` on
        new cells (whose :meth:`targets` it computes for this from ``obs`` alone, with
        ``expression=None``). For heads that act inside the
        backbone through :meth:`sctune.core.objective.EncoderHead.bind` (batch_correction's DSBN
        reads each cell's batch index). The keys must be :meth:`model_input_fields` and must
        not collide with the backbone's own fields. Default: none.
        """
        return {}

    def sampling_groups(
        self, targets: np.ndarray, prepared: Any, config: PluginConfig
    ) -> np.ndarray | None:
        """A group label per TRAINING cell (rows of its ``targets``), or ``None`` (default).

        When given, every training minibatch holds cells of one group (shuffled within groups,
        batches in random order; the leftovers of all groups fill the last batches), e.g.
        scPEFT's per-batch sampling. Length bucketing and ``sample_weights`` are then unused."""
        return None

    def exports_backbone(self, config: PluginConfig) -> bool:
        """True when a run with ``config`` writes the trained backbone in its real checkpoint
        format (``Backbone.export_checkpoint``) into ``<run>/pretrained`` (pretraining).
        Default: False."""
        return False

    def sample_weights(self, prepared: Any, config: PluginConfig) -> np.ndarray | None:
        """Per-training-cell sampling weights for a weighted sampler, or ``None`` to shuffle."""
        return None

    def validation_metrics(
        self, logits: np.ndarray, targets: np.ndarray, prepared: Any, config: PluginConfig
    ) -> dict[str, float]:
        """Metrics of the validation cells after each epoch, keyed as in :attr:`monitors`
        without the ``valid/`` prefix. ``logits`` and ``targets`` are gathered over all
        processes. Default: none (early stopping then monitors the losses)."""
        return {}

    @abstractmethod
    def evaluate(
        self,
        *,
        logits: np.ndarray,
        targets: np.ndarray,
        embeddings: np.ndarray | None,
        prepared: Any,
        config: PluginConfig,
        out_dir: Path | None,
    ) -> dict[str, Any]:
        """Test metrics (``dict`` of floats plus optional nested reports); write plots to
        ``out_dir`` when it is given."""

    @abstractmethod
    def annotate(self, logits: np.ndarray, prepared: Any) -> dict[str, np.ndarray]:
        """Columns (obs name -> one value per row of ``logits``) that ``predictions.h5ad`` and
        ``sctune predict`` write for each cell, e.g. ``sctune_prediction``."""

    def reference_embeddings(
        self, targets: np.ndarray, prepared: Any, config: PluginConfig
    ) -> dict[str, np.ndarray]:
        """Other embeddings of every cell (rows as ``targets``) that ``predictions.h5ad`` keeps
        next to ``X_sctune``, as ``obsm[name]`` (e.g. ``X_pca``, ``X_harmony`` for comparison).
        Default: none."""
        return {}

    def summary(self, metrics: dict[str, Any]) -> str:
        """One line for the console after the run. Default: the scalar test metrics."""
        scalars = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
        return "  ".join(scalars[:6])

    def describe(self, prepared: Any) -> str:
        """A short description of the prepared state for ``sctune inspect`` (e.g. ``10
        classes``). Default: empty."""
        return ""

    def transfer(
        self,
        reference: np.ndarray,
        reference_targets: np.ndarray,
        query: np.ndarray,
        prepared: Any,
        config: PluginConfig,
    ) -> np.ndarray:
        """Zero-shot: scores for ``query`` from frozen ``reference`` embeddings (no training)."""
        raise NotImplementedError(f"task '{self.name}' has no zero-shot transfer")

    @abstractmethod
    def state(self, prepared: Any) -> dict[str, Any]:
        """JSON-able task state (e.g. the label map) for the run directory."""

    @abstractmethod
    def from_state(self, state: dict[str, Any]) -> Any:
        """Inverse of :meth:`state`, used by ``sctune predict``."""


def monitor_direction(task: type[Task], monitor: str) -> Direction | None:
    """``"min"``/``"max"`` for a name early stopping may monitor with ``task``, else None."""
    return {**ALWAYS_MONITORED, **task.monitors}.get(monitor)
