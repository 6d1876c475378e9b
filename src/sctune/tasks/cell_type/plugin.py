"""Cell-type identification: scGPT's ClsDecoder on the cell embedding, CE loss, sklearn metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sctune import hookimpl
from sctune.core.task import Task
from sctune.tasks.cell_type.config import CellTypeConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class CellTypeState:
    classes: list[str]
    class_weights: list[float] | None
    train_targets: np.ndarray | None = None


class CellTypeTask(Task):
    name: ClassVar[str] = "cell_type"
    config_cls = CellTypeConfig
    description: ClassVar[str] = (
        "cell-type identification (classifier head, kNN zero-shot transfer)"
    )

    def prepare(
        self, labels: np.ndarray, split: dict[str, np.ndarray], config: Any
    ) -> CellTypeState:
        train = labels[split["train"]]
        classes = sorted(set(train.tolist()))
        counts = np.array([(train == c).sum() for c in classes], dtype=np.float64)
        weights = None
        if config.class_weights == "scpeft":  # (1 - n_c/N)^2, training split only (no leakage)
            weights = ((1.0 - counts / counts.sum()) ** 2).tolist()
        elif config.class_weights == "balanced":
            weights = (counts.sum() / (len(classes) * counts)).tolist()
        state = CellTypeState(classes, weights)
        state.train_targets = self.targets(train, state)
        return state

    def targets(self, labels: np.ndarray, prepared: CellTypeState) -> np.ndarray:
        index = {c: i for i, c in enumerate(prepared.classes)}
        return np.array([index.get(str(x), -1) for x in labels], dtype=np.int64)

    def head(self, hidden_size: int, prepared: CellTypeState, config: Any) -> nn.Module:
        from sctune.tasks.cell_type.head import ClsDecoder

        return ClsDecoder(
            hidden_size, len(prepared.classes), config.head_layers, config.input_norm
        )

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, prepared: CellTypeState, config: Any
    ) -> torch.Tensor:
        import torch.nn.functional as F

        weight = None
        if prepared.class_weights is not None:
            weight = logits.new_tensor(prepared.class_weights, dtype=torch_float())
        valid = targets >= 0
        if not bool(valid.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[valid].float(), targets[valid], weight=weight)

    def sample_weights(self, prepared: CellTypeState, config: Any) -> np.ndarray | None:
        if config.sampler != "weighted" or prepared.train_targets is None:
            return None
        counts = np.bincount(prepared.train_targets, minlength=len(prepared.classes)).astype(
            np.float64
        )
        return 1.0 / counts[prepared.train_targets]

    def predict(
        self, logits: np.ndarray, prepared: CellTypeState
    ) -> tuple[np.ndarray, np.ndarray]:
        z = logits - logits.max(axis=1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        idx = prob.argmax(axis=1)
        return np.array(prepared.classes, dtype=object)[idx], prob[np.arange(len(idx)), idx]

    def transfer(
        self,
        reference: np.ndarray,
        reference_targets: np.ndarray,
        query: np.ndarray,
        prepared: CellTypeState,
        config: Any,
    ) -> np.ndarray:
        """kNN label transfer on L2-normalised embeddings (scPEFT's native baseline)."""
        from sklearn.neighbors import KNeighborsClassifier

        def unit(x: np.ndarray) -> np.ndarray:
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

        knn = KNeighborsClassifier(n_neighbors=min(config.knn_k, len(reference)))
        knn.fit(unit(reference), reference_targets)
        proba = np.full((len(query), len(prepared.classes)), 0.0)
        proba[:, knn.classes_] = knn.predict_proba(unit(query))
        return np.log(np.clip(proba, 1e-6, 1.0))  # log-probabilities serve as logits

    def evaluate(
        self,
        *,
        logits: np.ndarray,
        targets: np.ndarray,
        embeddings: np.ndarray | None,
        prepared: CellTypeState,
        config: Any,
        out_dir: Path | None,
    ) -> dict[str, Any]:
        from sctune.tasks.cell_type import metrics, plots

        pred = logits.argmax(axis=1)
        result = metrics.classification_metrics(targets, pred, prepared.classes)
        if embeddings is not None:
            s = metrics.silhouette(embeddings, targets)
            result["silhouette"] = s
            if config.scib_silhouette and s is not None:
                result["silhouette_scib_rescaled"] = (s + 1) / 2
        if out_dir is not None:
            cm = metrics.row_normalised_confusion(targets, pred, len(prepared.classes))
            plots.confusion_png(
                cm,
                prepared.classes,
                out_dir / "confusion_matrix.png",
                f"test: accuracy {result['accuracy']:.3f}, balanced {result['balanced_accuracy']:.3f}",
            )
            if embeddings is not None and config.umap and len(targets) > 3:
                names = np.array(prepared.classes, dtype=object)
                plots.umap_png(
                    embeddings, names[targets].tolist(), names[pred].tolist(), out_dir / "umap.png"
                )
        return result

    def state(self, prepared: CellTypeState) -> dict[str, Any]:
        return {"classes": prepared.classes, "class_weights": prepared.class_weights}

    def from_state(self, state: dict[str, Any]) -> CellTypeState:
        return CellTypeState(list(state["classes"]), state.get("class_weights"))


def torch_float() -> Any:
    import torch

    return torch.float32


@hookimpl
def sctune_register_tasks() -> list[type[Task]]:
    return [CellTypeTask]
