"""Classification metrics (scikit-learn) and embedding quality."""

from __future__ import annotations

from typing import Any

import numpy as np

DEFINITIONS = {
    "accuracy": "fraction of test cells whose predicted type equals the label",
    "balanced_accuracy": "mean recall over the classes present in the test labels (sklearn)",
    "macro_precision/recall/f1": "unweighted mean over the classes that occur in the test split's "
    "labels or predictions (sklearn's default; scPEFT v2 reports the same)",
    "macro_*_all_classes": "unweighted mean over every training class; a class absent from the "
    "test split counts as 0 there, so this is lower when the test split lacks classes",
    "weighted_*": "mean over classes weighted by their number of test cells",
    "silhouette": "sklearn silhouette_score of the test-cell embeddings by true type, Euclidean "
    "distance, raw value in [-1, 1]; on a fixed random sample of task.embedding_metric_cells "
    "test cells when there are more (embedding_metric_cells in the metrics says so)",
}


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro/weighted P/R/F1 and a per-class report.

    The headline macro scores average over the classes present in the test split (its labels or
    predictions, sklearn's default); ``macro_*_all_classes`` average over every training class.
    """
    from sklearn import metrics as skm

    if len(y_true) == 0:
        raise ValueError("no test cells to evaluate")
    labels = list(range(len(names)))
    present = sorted(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist()))
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(_balanced_accuracy(y_true, y_pred)),
    }
    for avg, over, suffix in (
        ("macro", present, ""),
        ("weighted", present, ""),
        ("macro", labels, "_all_classes"),
    ):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=over, average=avg, zero_division=0
        )
        out[f"{avg}_precision{suffix}"] = float(p)
        out[f"{avg}_recall{suffix}"] = float(r)
        out[f"{avg}_f1{suffix}"] = float(f)
    out["n_test_classes"] = len(set(np.asarray(y_true).tolist()))
    out["n_training_classes"] = len(names)
    report = skm.classification_report(
        y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
    )
    out["per_class"] = {n: {k: float(v) for k, v in report[n].items()} for n in names}
    out["definitions"] = DEFINITIONS
    return out


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's balanced accuracy (mean recall over the classes in ``y_true``); its warning about
    predicted classes absent from the test split is expected here and not shown."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        # a test split of one class (tiny data): sklearn's confusion-matrix shape warning
        warnings.filterwarnings("ignore", message="A single label was found")
        return float(balanced_accuracy_score(y_true, y_pred))


def silhouette(embeddings: np.ndarray, y: np.ndarray) -> float | None:
    """Raw silhouette in [-1, 1] of the embeddings by cell type (Euclidean, as methods.md), or
    None if undefined."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(y)) < 2 or len(y) <= len(np.unique(y)):
        return None
    return float(silhouette_score(embeddings, y, metric="euclidean"))


def row_normalised_confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=list(range(n))).astype(float)
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
