"""The task contract: labels in, a head on the cell embedding, a loss, metrics and plots out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from sctune.core.config import PluginConfig


@dataclass
class StepOutput:
    """One training or evaluation step: the (weighted) loss, the logits and the targets."""

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


class Task(ABC):
    """A downstream task (cell-type identification; batch correction later).

    ``prepared`` is the task's own state built from the training split (label map, class
    weights); :meth:`state` / :meth:`from_state` make it JSON for the run directory.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[PluginConfig]]
    description: ClassVar[str] = ""

    @abstractmethod
    def prepare(
        self, labels: np.ndarray, split: dict[str, np.ndarray], config: PluginConfig
    ) -> Any:
        """Build the task state from all labels and the split (statistics from training only)."""

    @abstractmethod
    def targets(self, labels: np.ndarray, prepared: Any) -> np.ndarray:
        """Integer targets for ``labels`` (``-1`` for labels unknown to the task)."""

    @abstractmethod
    def head(self, hidden_size: int, prepared: Any, config: PluginConfig) -> nn.Module:
        """A new head mapping the cell embedding ``(batch, hidden)`` to outputs."""

    @abstractmethod
    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, prepared: Any, config: PluginConfig
    ) -> torch.Tensor:
        """The training loss of head outputs ``logits`` against integer ``targets``."""

    def sample_weights(self, prepared: Any, config: PluginConfig) -> np.ndarray | None:
        """Per-training-cell sampling weights for a weighted sampler, or ``None`` to shuffle."""
        return None

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
        """Metrics (``dict`` of floats plus optional nested reports); write plots to ``out_dir``."""

    @abstractmethod
    def predict(self, logits: np.ndarray, prepared: Any) -> tuple[np.ndarray, np.ndarray]:
        """Predicted labels and confidences for rows of ``logits``."""

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
