"""Statistics over seeds and paired comparisons on the same splits.

- **Per grid cell** (task, dataset, backbone, method): the mean over seeds and its two-sided
  Student-t confidence interval, ``mean ± t(0.975, n-1) · sd / sqrt(n)`` (``scipy.stats.t``;
  sd with ddof 1). One seed gives no interval.
- **Paired comparison, cell typing**: a paired bootstrap over test cells, stratified by seed.
  Each resample draws, for every seed, its test cells with replacement and scores *both* methods
  on the same drawn cells (same split, same cells); the statistic is the difference of macro F1
  averaged over the shared seeds. The interval is the percentile interval of the resamples, the
  two-sided p-value ``2 · min(P(Δ* ≤ 0), P(Δ* ≥ 0))`` (floored at 1 / resamples). A Wilcoxon
  signed-rank test (``scipy.stats.wilcoxon``, exact) on the per-seed differences is reported
  too; with 3 seeds its smallest two-sided p is 0.25, so it can never reach 0.05 there.
- **Paired comparison, batch correction**: integration scores do not decompose over cells, so
  the per-seed differences of the total score get a t interval and the Wilcoxon test.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def mean_ci(values: list[Any], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` with a Student-t interval; NaN bounds for fewer than 2 values."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - half, m + half


def wilcoxon_p(diffs: list[float]) -> float:
    """Two-sided exact Wilcoxon signed-rank p of paired differences (NaN when undefined)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or np.allclose(d, 0):
        return math.nan
    try:
        return float(stats.wilcoxon(d, alternative="two-sided", method="exact").pvalue)
    except ValueError:
        return math.nan


def encode(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    classes = sorted(set(truth.tolist()) | set(a.tolist()) | set(b.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    return tuple(np.array([index[v] for v in x], dtype=np.int64) for x in (truth, a, b)) + (
        np.asarray(len(classes)),
    )


def macro_f1_resampled(t: np.ndarray, p: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """sklearn-style macro F1 (classes present in the labels or predictions) of each resample
    ``idx[b]`` (shape B x n), in one ``bincount``."""
    B = idx.shape[0]
    tt, pp = t[idx], p[idx]
    flat = (np.arange(B)[:, None] * k * k + tt * k + pp).ravel()
    conf = np.bincount(flat, minlength=B * k * k).reshape(B, k, k)
    tp = np.diagonal(conf, axis1=1, axis2=2).astype(float)
    fn = conf.sum(axis=2) - tp
    fp = conf.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    denom = np.where(present, 2 * tp + fp + fn, 1)
    f1 = np.where(present, 2 * tp / denom, 0.0)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def paired_bootstrap(
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired, seed-stratified bootstrap of the macro-F1 difference (method A - method B).

    ``pairs`` holds one ``(truth, pred_a, pred_b)`` per seed, aligned on the same test cells.
    """
    rng = np.random.default_rng(seed)
    observed, boots = [], np.zeros(n_boot)
    for truth, a, b in pairs:
        t, pa, pb, k = encode(truth, a, b)
        n, kk = len(t), int(k)
        full = np.arange(n)[None, :]
        observed.append(
            float(macro_f1_resampled(t, pa, full, kk)[0] - macro_f1_resampled(t, pb, full, kk)[0])
        )
        idx = rng.integers(0, n, size=(n_boot, n))
        boots += macro_f1_resampled(t, pa, idx, kk) - macro_f1_resampled(t, pb, idx, kk)
    boots /= len(pairs)
    alpha = (1 - confidence) / 2
    p = 2 * min(float((boots <= 0).mean()), float((boots >= 0).mean()))
    return {
        "delta": float(np.mean(observed)),
        "ci_low": float(np.quantile(boots, alpha)),
        "ci_high": float(np.quantile(boots, 1 - alpha)),
        "p": max(min(p, 1.0), 1.0 / n_boot),
        "per_seed": observed,
    }


def paired_seeds(diffs: list[float], confidence: float = 0.95) -> dict[str, Any]:
    """Per-seed paired differences: mean, t interval and Wilcoxon p."""
    m, lo, hi = mean_ci(diffs, confidence)
    return {"delta": m, "ci_low": lo, "ci_high": hi, "p": wilcoxon_p(diffs), "per_seed": diffs}


def f1_per_class(truth: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, float]:
    """F1 of each given class (0 when it is absent from both truth and prediction)."""
    from sklearn.metrics import f1_score

    scores = f1_score(truth, pred, labels=classes, average=None, zero_division=0)
    return {c: float(s) for c, s in zip(classes, scores)}


def classification(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The headline metrics as the cell_type task defines them (sklearn defaults)."""
    from sklearn import metrics as skm

    return {
        "accuracy": float(skm.accuracy_score(truth, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(truth, pred)),
        "macro_f1": float(skm.f1_score(truth, pred, average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(truth, pred, average="weighted", zero_division=0)),
    }
