"""Integration metrics (scib-metrics) and the reference embeddings (PCA, Harmony).

The metric set and the aggregates follow ``scib_metrics.benchmark.Benchmarker`` (0.5.x defaults,
without min-max scaling): bio conservation = mean(isolated labels, NMI, ARI (k-means), label
silhouette, cLISI); batch correction = mean(BRAS, iLISI, kBET per label, graph connectivity,
PCR comparison); total = 0.6 * bio + 0.4 * batch. The classic batch silhouette
(``silhouette_batch``, scib's ASW batch) is reported too, outside the aggregate (scib-metrics 0.5
replaced it by BRAS in the Benchmarker). Neighbours are exact (scikit-learn) rather than
pynndescent: on a few hundred test cells this is instant and avoids a minute of numba compiling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sctune.core.errors import SctuneError

BIO = ("isolated_labels", "nmi", "ari", "silhouette_label", "clisi")
BATCH = ("bras", "ilisi", "kbet", "graph_connectivity", "pcr_comparison")
INSTALL_HINT = "pip install 'sctune[integration]'  (scib-metrics and harmonypy)"


def _scib() -> Any:
    try:
        import scib_metrics
    except ImportError as exc:
        raise SctuneError(
            f"task 'batch_correction' needs scib-metrics for its metrics ({exc})",
            hint=INSTALL_HINT,
        ) from exc
    return scib_metrics


def _neighbors(X: np.ndarray, k: int) -> Any:
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    k = max(1, min(k, len(X) - 1))
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    return NeighborsResults(indices=idx[:, 1:], distances=dist[:, 1:])


def _f(x: Any) -> float:
    return float(np.asarray(x))


def scib_scores(
    X: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray | None,
    pre: np.ndarray | None,
    *,
    kbet: bool = True,
) -> dict[str, float | None]:
    """All metrics of one embedding ``X`` of test cells, plus ``bio``, ``batch`` and ``total``.

    ``labels`` None: no bio-conservation metrics (the per-label batch metrics then treat all cells
    as one label). ``pre`` is the uncorrected embedding of the same cells (for PCR comparison).
    A metric that cannot be computed (too few cells, a single label) is ``None``.
    """
    sm = _scib()
    import warnings

    X = np.asarray(X, dtype=np.float32)
    batch = np.asarray(batch).astype(str)
    lab = np.asarray(labels).astype(str) if labels is not None else np.full(len(X), "all")
    nn90 = _neighbors(X, 90)
    out: dict[str, float | None] = {}

    def put(name: str, fn: Any) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = _f(fn())
        except Exception:  # a metric undefined on these cells (e.g. one label per batch)
            out[name] = None

    if labels is not None:
        put("isolated_labels", lambda: sm.isolated_labels(X, lab, batch))
        try:
            nmi_ari = sm.nmi_ari_cluster_labels_kmeans(X, lab)
            out["nmi"], out["ari"] = _f(nmi_ari["nmi"]), _f(nmi_ari["ari"])
        except Exception:
            out["nmi"] = out["ari"] = None
        put("silhouette_label", lambda: sm.silhouette_label(X, lab))
        put("clisi", lambda: sm.clisi_knn(nn90, lab))
    put("bras", lambda: sm.bras(X, lab, batch))
    put("silhouette_batch", lambda: sm.silhouette_batch(X, lab, batch))
    put("ilisi", lambda: sm.ilisi_knn(nn90, batch))
    if kbet:
        put("kbet", lambda: sm.kbet_per_label(_neighbors(X, 50), batch, lab))
    put("graph_connectivity", lambda: sm.graph_connectivity(_neighbors(X, 15), lab))
    if pre is not None:
        put(
            "pcr_comparison",
            lambda: sm.pcr_comparison(np.asarray(pre, np.float32), X, batch, categorical=True),
        )

    def mean(keys: tuple[str, ...]) -> float | None:
        vals = [out[k] for k in keys if out.get(k) is not None]
        return float(np.mean(vals)) if vals else None

    out["bio"] = mean(BIO) if labels is not None else None
    out["batch"] = mean(BATCH)
    out["total"] = (
        0.6 * out["bio"] + 0.4 * out["batch"]
        if out["bio"] is not None and out["batch"] is not None
        else None
    )
    return out


def pca(expr: np.ndarray, n_pcs: int, seed: int = 0) -> np.ndarray:
    """Uncorrected reference: PCA (centred, not scaled) of log-normalised HVG expression."""
    from sklearn.decomposition import PCA

    n = max(1, min(n_pcs, expr.shape[0] - 1, expr.shape[1]))
    return PCA(n_components=n, random_state=seed).fit_transform(expr).astype(np.float32)


def harmony(pcs: np.ndarray, batch: np.ndarray, seed: int = 0) -> np.ndarray:
    """Harmony (harmonypy) on the PCA of the same cells."""
    try:
        import harmonypy
    except ImportError as exc:
        raise SctuneError(
            f"task 'batch_correction' needs harmonypy for its Harmony reference ({exc})",
            hint=INSTALL_HINT + "; or set task.references=[pca]",
        ) from exc
    import pandas as pd

    meta = pd.DataFrame({"batch": np.asarray(batch).astype(str)})
    # harmonypy's default cluster count is min(100, cells / 30): at least 1 on tiny test splits
    nclust = max(1, min(100, pcs.shape[0] // 30))
    ho = harmonypy.run_harmony(
        pcs, meta, ["batch"], random_state=seed, verbose=False, nclust=nclust
    )
    z = np.asarray(ho.Z_corr)
    if z.shape[0] != pcs.shape[0]:  # harmonypy < 2 returns (components, cells)
        z = z.T
    return z.astype(np.float32)
