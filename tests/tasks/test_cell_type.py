"""The cell_type task: training-only statistics, loss, prediction, kNN transfer, metrics, plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sctune.tasks.cell_type.config import CellTypeConfig
from sctune.tasks.cell_type.plugin import CellTypeTask

LABELS = np.array(["T"] * 6 + ["B"] * 3 + ["NK"] * 1 + ["T", "B", "Mono"])
SPLIT = {"train": np.arange(10), "valid": np.array([10, 11]), "test": np.array([12])}


def test_prepare_uses_training_labels_only() -> None:
    task = CellTypeTask()
    state = task.prepare(LABELS, SPLIT, CellTypeConfig(class_weights="scpeft"))
    assert state.classes == ["B", "NK", "T"]  # 'Mono' exists only outside training
    n = np.array([3, 1, 6]) / 10
    assert state.class_weights == pytest.approx(((1 - n) ** 2).tolist())
    assert task.targets(np.array(["T", "Mono"]), state).tolist() == [2, -1]
    balanced = task.prepare(LABELS, SPLIT, CellTypeConfig(class_weights="balanced"))
    assert balanced.class_weights == pytest.approx((10 / (3 * np.array([3, 1, 6]))).tolist())
    weights = task.sample_weights(state, CellTypeConfig(sampler="weighted"))
    assert weights is not None and weights[state.train_targets == 1][0] == 1.0
    assert task.sample_weights(state, CellTypeConfig()) is None


def test_loss_ignores_unknown_targets_and_weights_classes() -> None:
    task = CellTypeTask()
    state = task.prepare(LABELS, SPLIT, CellTypeConfig(class_weights="scpeft"))
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([0, 2, -1, 1])
    loss = task.loss(logits, targets, state, CellTypeConfig())
    w = torch.tensor(state.class_weights, dtype=torch.float32)
    want = torch.nn.functional.cross_entropy(logits[[0, 1, 3]], targets[[0, 1, 3]], weight=w)
    assert torch.allclose(loss, want)
    none = task.loss(logits, torch.tensor([-1, -1, -1, -1]), state, CellTypeConfig())
    assert float(none.detach()) == 0.0


def test_head_and_state_round_trip() -> None:
    task = CellTypeTask()
    state = task.prepare(LABELS, SPLIT, CellTypeConfig())
    head = task.head(512, state, CellTypeConfig())
    assert sum(p.numel() for p in head.parameters()) == 527_360 + 513 * 3
    assert head(torch.randn(2, 512)).shape == (2, 3)
    again = task.from_state(task.state(state))
    assert again.classes == state.classes and again.class_weights == state.class_weights


def test_predict_and_transfer() -> None:
    task = CellTypeTask()
    state = task.prepare(LABELS, SPLIT, CellTypeConfig())
    pred, conf = task.predict(np.array([[0.0, 0.0, 5.0], [3.0, 0.0, 0.0]]), state)
    assert pred.tolist() == ["T", "B"] and (conf > 0.8).all() and (conf <= 1).all()
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    ref_targets = np.repeat([0, 1, 2], 5)
    ref = centres[ref_targets] + rng.normal(0, 0.1, (15, 3))
    query = centres[[2, 0, 1]] + rng.normal(0, 0.1, (3, 3))
    scores = task.transfer(ref, ref_targets, query, state, CellTypeConfig(knn_k=3))
    assert scores.argmax(axis=1).tolist() == [2, 0, 1]


def test_evaluate_metrics_and_plots(tmp_path: Path) -> None:
    task = CellTypeTask()
    state = task.prepare(LABELS, SPLIT, CellTypeConfig())
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1, 2], 8)
    logits = np.eye(3)[targets] * 3 + rng.normal(0, 1, (24, 3))
    emb = np.eye(3)[targets] + rng.normal(0, 0.2, (24, 3))
    result = task.evaluate(
        logits=logits,
        targets=targets,
        embeddings=emb,
        prepared=state,
        config=CellTypeConfig(umap=False),
        out_dir=tmp_path,
    )
    pred = logits.argmax(axis=1)
    assert result["accuracy"] == pytest.approx((pred == targets).mean())
    for key in (
        "balanced_accuracy",
        "macro_f1",
        "weighted_f1",
        "macro_precision",
        "weighted_recall",
        "silhouette",
    ):
        assert key in result
    assert set(result["per_class"]) == {"B", "NK", "T"}
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "umap.png").exists()  # umap: false (the matrix test draws one)


def test_headline_macro_is_over_classes_in_the_test_split() -> None:
    """A training class absent from the test split does not drag the headline macro F1 down;
    the all-classes variant keeps it, under its own name (sklearn as the oracle)."""
    from sklearn.metrics import f1_score

    from sctune.tasks.cell_type.metrics import classification_metrics

    y_true = np.array([0, 0, 1, 1, 1, 0])  # class 2 ('T') has no test cell
    y_pred = np.array([0, 1, 1, 1, 0, 0])
    m = classification_metrics(y_true, y_pred, ["B", "NK", "T"])
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["macro_f1_all_classes"] == pytest.approx(
        f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro", zero_division=0)
    )
    assert m["macro_f1_all_classes"] < m["macro_f1"]
    assert m["n_test_classes"] == 2 and m["n_training_classes"] == 3
    assert "Euclidean" in m["definitions"]["silhouette"]


def test_preflight_missing_and_tiny_classes() -> None:
    """The task checks its labels against the split (the engine knows nothing of classes)."""
    from sctune.core.errors import DataError

    labels = np.array(["a"] * 20 + ["b"] * 3 + ["c"] * 2)
    split = {"train": np.arange(0, 22), "valid": np.array([22]), "test": np.array([23, 24])}
    report = CellTypeTask().preflight(labels, split, CellTypeConfig(min_class_cells=5))
    assert len(report.errors) == 1 and "'c' (2 cells)" in report.errors[0]
    assert "test split" in report.errors[0]
    assert report.warnings and "'b' (2)" in report.warnings[0]
    assert "task.min_class_cells" in report.warnings[0]
    assert report.info == ["2 training classes"]
    with pytest.raises(DataError, match="preflight found 1 problem"):
        report.raise_errors()


def test_embedding_metrics_look_at_a_fixed_sample_of_large_test_sets() -> None:
    """The silhouette is quadratic in the cells: above ``embedding_metric_cells`` it is taken on
    a fixed random sample (the same on every call); accuracy and F1 still use every cell."""
    from sklearn.metrics import silhouette_score

    from sctune.core.preprocess import metric_sample

    task = CellTypeTask()
    state = task.prepare(LABELS, SPLIT, CellTypeConfig())
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 3, 500)
    logits = np.eye(3)[targets] + rng.normal(0, 1, (500, 3))
    emb = np.eye(3)[targets] + rng.normal(0, 0.5, (500, 3))
    cfg = CellTypeConfig(umap=False, embedding_metric_cells=100)
    a = task.evaluate(
        logits=logits, targets=targets, embeddings=emb, prepared=state, config=cfg, out_dir=None
    )
    some = metric_sample(500, 100)
    assert some is not None and len(some) == 100 and a["embedding_metric_cells"] == 100
    assert a["silhouette"] == pytest.approx(silhouette_score(emb[some], targets[some]))
    assert a["accuracy"] == pytest.approx((logits.argmax(1) == targets).mean())
    whole = task.evaluate(
        logits=logits,
        targets=targets,
        embeddings=emb,
        prepared=state,
        config=CellTypeConfig(umap=False, embedding_metric_cells=None),
        out_dir=None,
    )
    assert whole["silhouette"] == pytest.approx(silhouette_score(emb, targets))
    assert "embedding_metric_cells" not in whole and whole["accuracy"] == a["accuracy"]
