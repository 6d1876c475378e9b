"""Pretraining: each backbone's own masked objective on unlabelled cells (full or any adapter).

The head is the backbone's masked-modelling decoder
(:class:`sctune.core.objective.MaskedModelling`: scGPT masked expression values / MSE,
Geneformer masked rank tokens / cross-entropy, scBERT masked expression bins / cross-entropy),
reading the encoder's per-token outputs. Per cell the head returns ``[summed masked loss, masked
tokens, correctly predicted tokens]``; the loss is the mean over masked tokens of the batch.
With ``gepc`` the head also reconstructs the cell's log-normalised HVG expression from the cell
embedding (:mod:`sctune.tasks.pretrain.head`), added to the loss with ``gepc_weight``.
Validation and test report the held-out masked loss (and accuracy for token classes) on masks of a
fixed seed. With ``export`` the run writes the trained backbone, decoder included, in the
backbone's real checkpoint format into ``<run>/pretrained`` (:meth:`Task.exports_backbone`).

Labels are optional: with two or more cell types the test embedding is also scored by a kNN and a
logistic-regression probe (cross-validated on the test cells), the measure of what pretraining
put into the embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from sctune import hookimpl
from sctune.core.capabilities import Capability
from sctune.core.errors import DataError
from sctune.core.preprocess import lognorm, select_hvg
from sctune.core.task import Direction, Task
from sctune.tasks.pretrain.config import PretrainConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

UNLABELLED = {"", "unknown", "nan", "none"}
COLLAPSED = 1e-6
"""``embedding_spread`` below this: the cells embed almost alike (a representation collapse; a
randomly initialised backbone measured 1e-3 to 3e-3, healthy pretrained ones 5e-4 to 0.1, a
collapsed one 1e-8)."""
MASKED_COLUMNS = 3  # [summed masked loss, masked tokens, correct tokens], then GEPC columns


class PretrainTask(Task):
    name: ClassVar[str] = "pretrain"
    config_cls = PretrainConfig
    description: ClassVar[str] = (
        "self-supervised (continued) pretraining with the backbone's own masked objective; "
        "writes a checkpoint in the backbone's real format"
    )
    head_input: ClassVar[Literal["cell", "encoder"]] = "encoder"
    monitors: ClassVar[dict[str, Direction]] = {
        "valid/masked_loss": "min",
        "valid/masked_accuracy": "max",
        "valid/gepc_mse": "min",
    }

    @classmethod
    def requires_for(cls, config: Any) -> frozenset[Capability]:
        return frozenset({Capability.MASKED_MODELLING})

    @classmethod
    def example_config(cls) -> dict[str, object]:
        return {"probe": False}

    def exports_backbone(self, config: Any) -> bool:
        return bool(config.export)

    def prepare(
        self,
        labels: np.ndarray,
        split: dict[str, np.ndarray],
        config: Any,
        *,
        obs: Any = None,
        expression: Any = None,
    ) -> dict[str, Any]:
        known = sorted({str(x) for x in labels.tolist()} - UNLABELLED)
        hvg: list[str] = []
        if config.gepc:
            if expression is None:
                raise DataError(
                    "task.gepc: reconstructing expression needs the expression matrix, which "
                    "was not passed to the task (data.stream: true keeps it in the file)",
                    hint="set task.gepc=false, or data.stream=false (with data.max_cells to fit "
                    "in memory)",
                )
            hvg = select_hvg(expression, split["train"], config.n_hvg)
        return {"labels": known, "hvg": hvg}

    def targets(
        self, labels: np.ndarray, prepared: Any, *, obs: Any = None, expression: Any = None
    ) -> np.ndarray:
        """``[label index (-1 unknown) | log-normalised HVG expression (GEPC)]`` per cell; HVGs
        missing from ``expression`` (new cells at predict time) are 0."""
        index = {c: i for i, c in enumerate(prepared["labels"])}
        hvg = prepared.get("hvg", [])
        out = np.zeros((len(labels), 1 + len(hvg)), dtype=np.float32)
        out[:, 0] = [index.get(str(x), -1) for x in labels.tolist()]
        if hvg and expression is not None:
            pos = {g: i for i, g in reversed(list(enumerate(expression.genes)))}
            found = [(j, pos[g]) for j, g in enumerate(hvg) if g in pos]
            if found:
                dest, cols = map(list, zip(*found))
                out[:, [1 + j for j in dest]] = lognorm(expression)[:, cols].toarray()
        return out

    def head(self, hidden_size: int, prepared: Any, config: Any) -> nn.Module:
        from sctune.tasks.pretrain.head import MaskedModellingHead

        return MaskedModellingHead(
            hidden_size, len(prepared.get("hvg", [])), mask_ratio=config.mask_ratio
        )

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, prepared: Any, config: Any
    ) -> torch.Tensor:
        z = logits.float()
        loss = z[:, 0].sum() / z[:, 1].detach().sum().clamp_min(1.0)
        if z.shape[1] > MASKED_COLUMNS:
            import torch.nn.functional as F

            gepc = F.mse_loss(z[:, MASKED_COLUMNS:], targets.float()[:, 1:])
            loss = loss + config.gepc_weight * gepc
        return loss

    @staticmethod
    def _scores(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        z = np.asarray(logits, dtype=np.float64)
        out: dict[str, float] = {}
        if z.shape[1] > MASKED_COLUMNS and len(z):
            want = np.asarray(targets, dtype=np.float64).reshape(len(z), -1)[:, 1:]
            out["gepc_mse"] = float(np.mean((z[:, MASKED_COLUMNS:] - want) ** 2))
        n = float(z[:, 1].sum())
        if n <= 0:
            return out
        out.update({"masked_loss": float(z[:, 0].sum() / n), "masked_tokens": n})
        if not np.isnan(z[:, 2]).any():  # NaN: a regression objective has no accuracy
            out["masked_accuracy"] = float(z[:, 2].sum() / n)
        return out

    def validation_metrics(
        self, logits: np.ndarray, targets: np.ndarray, prepared: Any, config: Any
    ) -> dict[str, float]:
        out = self._scores(logits, targets)
        out.pop("masked_tokens", None)
        return out

    def evaluate(
        self,
        *,
        logits: np.ndarray,
        targets: np.ndarray,
        embeddings: np.ndarray | None,
        prepared: Any,
        config: Any,
        out_dir: Path | None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = dict(self._scores(logits, targets))
        result["n_cells"] = int(len(logits))
        if embeddings is not None and len(embeddings):
            from sctune.core.preprocess import metric_sample

            labels = np.asarray(targets).reshape(len(logits), -1)[:, 0].astype(np.int64)
            some = metric_sample(len(labels), config.embedding_metric_cells)
            if some is not None:
                embeddings, labels = embeddings[some], labels[some]
                result["embedding_metric_cells"] = len(some)
            result["embedding_spread"] = embedding_spread(embeddings)
            if config.probe:
                result.update(probe_scores(embeddings, labels))
        return result

    def annotate(self, logits: np.ndarray, prepared: Any) -> dict[str, np.ndarray]:
        """Each cell's mean masked loss (NaN when it had no token to mask): how well the model
        reconstructs it, e.g. to spot cells unlike the pretraining data. Masks come from a fixed
        seed per evaluation batch."""
        z = np.asarray(logits, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_cell = np.where(z[:, 1] > 0, z[:, 0] / z[:, 1], np.nan)
        return {"sctune_masked_loss": per_cell.astype(np.float32)}

    def summary(self, metrics: dict[str, Any]) -> str:
        parts = []
        if "masked_loss" in metrics:
            parts.append(f"masked loss {metrics['masked_loss']:.4f}")
        if "masked_accuracy" in metrics:
            parts.append(f"masked accuracy {metrics['masked_accuracy']:.4f}")
        for key in ("gepc_mse", "knn_macro_f1", "logreg_macro_f1"):
            if key in metrics:
                parts.append(f"{key} {metrics[key]:.4f}")
        spread = metrics.get("embedding_spread")
        if spread is not None and spread < COLLAPSED:
            parts.append(
                f"WARNING: the cell embeddings have COLLAPSED (embedding_spread {spread:.1e} < "
                f"{COLLAPSED:.0e}: every cell embeds almost alike, the objective is being met "
                "without reading the cell); try a lower trainer.optimizer.lr, fewer epochs or more "
                "cells, and check the probes"
            )
        return "  ".join(parts) or "no masked tokens scored"

    def describe(self, prepared: Any) -> str:
        n, hvg = len(prepared["labels"]), len(prepared.get("hvg", []))
        what = "masked modelling" + (f" + GEPC on {hvg} HVGs" if hvg else "")
        return f"{what}; {n} cell-type labels for the probes" if n else what

    def state(self, prepared: Any) -> dict[str, Any]:
        return {"labels": list(prepared["labels"]), "hvg": list(prepared.get("hvg", []))}

    def from_state(self, state: dict[str, Any]) -> Any:
        return {"labels": list(state.get("labels", [])), "hvg": list(state.get("hvg", []))}


def probe_scores(embeddings: np.ndarray, targets: np.ndarray, folds: int = 5) -> dict[str, float]:
    """Macro F1 of a 15-NN (fewer on tiny sets) and of a logistic regression on ``embeddings`` (stratified k-fold
    cross-validation over the labelled cells; classes with fewer cells than folds dropped)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(targets)
    keep = y >= 0
    classes, counts = np.unique(y[keep], return_counts=True)
    ok = set(classes[counts >= folds].tolist())
    keep &= np.isin(y, list(ok))
    if len(ok) < 2:
        return {}
    X, y = np.asarray(embeddings, dtype=np.float64)[keep], y[keep]
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    out: dict[str, float] = {"probe_cells": float(len(y)), "probe_classes": float(len(ok))}
    k = max(1, min(15, len(y) * (folds - 1) // folds - 1))
    models = {
        "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k)),
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
    }
    for name, model in models.items():
        pred = cross_val_predict(model, X, y, cv=cv)
        out[f"{name}_macro_f1"] = float(f1_score(y, pred, average="macro"))
    return out


@hookimpl
def sctune_register_tasks() -> list[type[Task]]:
    return [PretrainTask]


def embedding_spread(embeddings: np.ndarray) -> float:
    """1 - the mean cosine similarity of each cell's embedding to the cells' mean embedding: 0
    when every cell embeds in the same direction (collapse), larger the more cells differ. NaN
    when it cannot be told (fewer than 2 cells with a finite, non-zero embedding); 1 when the
    mean embedding is zero (cells spread evenly in every direction)."""
    E = np.asarray(embeddings, dtype=np.float64)
    if E.ndim != 2:
        return float("nan")
    norms = np.linalg.norm(E, axis=1)
    keep = np.isfinite(E).all(axis=1) & (norms > 0)
    if keep.sum() < 2:
        return float("nan")
    E, norms = E[keep], norms[keep]
    centre = E.mean(axis=0)
    length = float(np.linalg.norm(centre))
    if length == 0.0:
        return 1.0
    cos = (E @ centre) / (norms * length)
    return float(max(0.0, 1.0 - cos.mean()))
