"""Cell-type identification: scGPT's ClsDecoder on the cell embedding, CE loss, sklearn metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sctune import hookimpl
from sctune.core.task import Direction, Preflight, Task
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
    zero_shot: ClassVar[bool] = True  # kNN label transfer (transfer())
    monitors: ClassVar[dict[str, Direction]] = {
        "valid/accuracy": "max",
        "valid/balanced_accuracy": "max",
        "valid/macro_f1": "max",
    }

    def preflight(
        self, labels: np.ndarray, split: dict[str, np.ndarray], config: Any, *, obs: Any = None
    ) -> Preflight:
        """At least two classes; every validation/test class has training cells; tiny classes."""
        report = Preflight()
        train = set(labels[split["train"]])
        labels_missing = config_labels_missing(labels)
        if labels_missing:
            report.errors.append(
                "data.label_column is null: the cell_type task needs labels; set it to the "
                "adata.obs column holding the cell types"
            )
        elif len(set(labels)) < 2:
            only = next(iter(set(labels)), "")
            report.errors.append(
                f"data.label_column: every cell has the same label ('{only}', {len(labels)} "
                "cells); a classifier needs at least 2 classes: check data.label_column, or add "
                "cells of other types"
            )
        for part in ("valid", "test"):
            missing = sorted(set(labels[split[part]]) - train)
            if missing:
                report.errors.append(
                    f"{len(missing)} class(es) in the {part} split have no training cells: "
                    + ", ".join(
                        f"'{m}' ({int((labels[split[part]] == m).sum())} cells)"
                        for m in missing[:5]
                    )
                    + " ; use a stratified split, or drop these cells"
                )
        counts = {c: int((labels[split["train"]] == c).sum()) for c in sorted(train)}
        tiny = {c: n for c, n in counts.items() if n < config.min_class_cells}
        if tiny:
            report.warnings.append(
                f"{len(tiny)} class(es) have fewer than {config.min_class_cells} training cells "
                "(task.min_class_cells): "
                + ", ".join(f"'{c}' ({n})" for c, n in sorted(tiny.items(), key=lambda x: x[1]))
            )
        report.info.append(f"{len(train)} training class{'es' * (len(train) != 1)}")
        return report

    def prepare(
        self,
        labels: np.ndarray,
        split: dict[str, np.ndarray],
        config: Any,
        *,
        obs: Any = None,
        expression: Any = None,
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

    def targets(
        self,
        labels: np.ndarray,
        prepared: CellTypeState,
        *,
        obs: Any = None,
        expression: Any = None,
    ) -> np.ndarray:
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

    def validation_metrics(
        self, logits: np.ndarray, targets: np.ndarray, prepared: CellTypeState, config: Any
    ) -> dict[str, float]:
        from sctune.tasks.cell_type import metrics

        m = metrics.classification_metrics(targets, logits.argmax(axis=1), prepared.classes)
        return {k.split("/")[1]: float(m[k.split("/")[1]]) for k in self.monitors}

    def annotate(self, logits: np.ndarray, prepared: CellTypeState) -> dict[str, np.ndarray]:
        pred, conf = self.predict(logits, prepared)
        return {
            "sctune_prediction": pred.astype(str),
            "sctune_confidence": conf.astype(np.float32),
        }

    def summary(self, metrics: dict[str, Any]) -> str:
        return (
            f"accuracy {metrics['accuracy']:.4f}  balanced accuracy "
            f"{metrics['balanced_accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}"
        )

    def describe(self, prepared: CellTypeState) -> str:
        return f"{len(prepared.classes)} classes"

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
        from sctune.core.preprocess import metric_sample
        from sctune.tasks.cell_type import metrics, plots

        pred = logits.argmax(axis=1)
        result = metrics.classification_metrics(targets, pred, prepared.classes)
        # silhouette and UMAP: a fixed sample of at most embedding_metric_cells test cells
        some = metric_sample(len(targets), config.embedding_metric_cells)
        at = slice(None) if some is None else some
        if some is not None and embeddings is not None:
            result["embedding_metric_cells"] = len(some)
        if embeddings is not None:
            s = metrics.silhouette(embeddings[at], targets[at])
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
                    embeddings[at],
                    names[targets[at]].tolist(),
                    names[pred[at]].tolist(),
                    out_dir / "umap.png",
                )
        return result

    def state(self, prepared: CellTypeState) -> dict[str, Any]:
        return {"classes": prepared.classes, "class_weights": prepared.class_weights}

    def from_state(self, state: dict[str, Any]) -> CellTypeState:
        return CellTypeState(list(state["classes"]), state.get("class_weights"))


def config_labels_missing(labels: np.ndarray) -> bool:
    """The data layer labels every cell 'unknown' when data.label_column is null."""
    from sctune.core.data import UNKNOWN_LABEL

    return len(labels) > 0 and bool((labels == UNKNOWN_LABEL).all())


def torch_float() -> Any:
    import torch

    return torch.float32


@hookimpl
def sctune_register_tasks() -> list[type[Task]]:
    return [CellTypeTask]
