"""Classification metrics (scikit-learn) and embedding quality."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro/weighted P/R/F1 and a per-class report."""
    from sklearn import metrics as skm

    labels = list(range(len(names)))
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = (
            float(p),
            float(r),
            float(f),
        )
    report = skm.classification_report(
        y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
    )
    out["per_class"] = {n: {k: float(v) for k, v in report[n].items()} for n in names}
    return out


def silhouette(embeddings: np.ndarray, y: np.ndarray) -> float | None:
    """Raw silhouette in [-1, 1] of the embeddings by cell type (cosine), or None if undefined."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(y)) < 2 or len(y) <= len(np.unique(y)):
        return None
    return float(silhouette_score(embeddings, y, metric="cosine"))


def row_normalised_confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=list(range(n))).astype(float)
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
