"""Retrieval metrics, torch-free: Recall@K, MAP@R, R-Precision and NMI.

Used by training-time evaluation, export validation and ``proxyembed check`` alike, so every stage
reports the same numbers for the same embeddings. Similarity is the dot product, i.e. cosine for the
L2-normalised embeddings proxyembed produces. Nearest neighbours are exact and computed in blocks of
queries, so memory stays at ``block x gallery`` floats (SOP's 60k x 60k fits).

Conventions (Musgrave et al. 2020, "A Metric Learning Reality Check"): all-vs-all mode excludes the
query itself; R for a query is the number of other items of its class; MAP@R averages precision at
each correct rank within the first R neighbours. Metric values are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import BadInput

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)


def knn(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    block_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours by dot product: (indices, similarities), each (Nq, k), best first.

    With ``exclude_self`` the queries are the gallery and each item's own row is never returned.
    Ties are broken by the lower gallery index, so results are deterministic.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise BadInput(f"knn: queries {queries.shape} and gallery {gallery.shape} must be 2-D with the same width")
    n_avail = gallery.shape[0] - (1 if exclude_self else 0)
    k = min(k, n_avail)
    if k <= 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    idx_out = np.empty((len(queries), k), np.int64)
    sim_out = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), block_size):
        sims = queries[start : start + block_size] @ gallery.T
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        if k < sims.shape[1]:
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(sims.shape[1]), sims.shape).copy()
        part_sims = np.take_along_axis(sims, part, axis=1)
        # sort by similarity descending, then by index ascending for determinism
        order = np.lexsort((part, -part_sims), axis=1)
        idx_out[start : start + len(sims)] = np.take_along_axis(part, order, axis=1)
        sim_out[start : start + len(sims)] = np.take_along_axis(part_sims, order, axis=1)
    return idx_out, sim_out


def _class_counts(query_labels: np.ndarray, gallery_labels: np.ndarray, exclude_self: bool) -> np.ndarray:
    uniq, counts = np.unique(gallery_labels, return_counts=True)
    lookup = dict(zip(uniq.tolist(), counts.tolist(), strict=True))
    r = np.array([lookup.get(lab, 0) for lab in query_labels.tolist()], dtype=np.int64)
    return r - 1 if exclude_self else r


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    gallery: np.ndarray | None = None,
    gallery_labels: Sequence[int] | np.ndarray | None = None,
    nmi: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Recall@K for each K, MAP@R and R-Precision (and NMI if asked), keyed ``recall@1``, ``map@r``, ...

    Without ``gallery`` it is all-vs-all on ``embeddings`` with the query excluded (CUB / Cars / SOP);
    with ``gallery`` the ``embeddings`` are queries against it (In-Shop). Queries without any relevant
    item are skipped for MAP@R / R-Precision and count as misses for Recall@K.
    """
    q = np.asarray(embeddings, dtype=np.float32)
    q_lab = np.asarray(labels)
    if len(q) != len(q_lab):
        raise BadInput(f"metrics: {len(q)} embeddings but {len(q_lab)} labels")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] <= 0:
        raise BadInput(f"metrics: K values must be positive, got {list(ks)}")
    all_vs_all = gallery is None
    if len(q) < (2 if all_vs_all else 1):
        raise BadInput("metrics: need at least two evaluation images")
    g = q if all_vs_all else np.asarray(gallery, dtype=np.float32)
    g_lab = q_lab if all_vs_all else np.asarray(gallery_labels)
    if len(g) != len(g_lab):
        raise BadInput(f"metrics: {len(g)} gallery embeddings but {len(g_lab)} gallery labels")
    r = _class_counts(q_lab, g_lab, exclude_self=all_vs_all)
    depth = max(max(ks), int(r.max(initial=0)))
    idx, _ = knn(q, g, depth, exclude_self=all_vs_all)
    hits = g_lab[idx] == q_lab[:, None]
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(hits[:, :k].any(axis=1).mean())
    valid = r > 0
    if valid.any():
        ranks = np.arange(1, hits.shape[1] + 1)
        within_r = ranks[None, :] <= r[:, None]
        rel = hits & within_r
        precision_at_i = np.cumsum(rel, axis=1) / ranks[None, :]
        ap = (precision_at_i * rel).sum(axis=1)[valid] / r[valid]
        out["map@r"] = float(ap.mean())
        out["r_precision"] = float((rel.sum(axis=1)[valid] / r[valid]).mean())
    else:
        out["map@r"] = out["r_precision"] = 0.0
    if nmi:
        out["nmi"] = nmi_kmeans(q, q_lab, seed=seed)
    return out


def kmeans(x: np.ndarray, n_clusters: int, *, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster assignments from Lloyd's k-means with k-means++ seeding (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    n_clusters = min(n_clusters, n)
    centers = np.empty((n_clusters, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for c in range(1, n_clusters):
        total = d2.sum()
        pick = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers[c] = x[pick]
        d2 = np.minimum(d2, ((x - centers[c]) ** 2).sum(1))
    x_sq = (x**2).sum(1)[:, None]
    assign = np.full(n, -1)
    for _ in range(iters):
        dist = x_sq - 2 * x @ centers.T + (centers**2).sum(1)[None, :]
        new = dist.argmin(1)
        if np.array_equal(new, assign):
            break
        assign = new
        for c in range(n_clusters):
            members = x[assign == c]
            if len(members):
                centers[c] = members.mean(0)
    return assign


def normalized_mutual_info(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """NMI with the arithmetic-mean normaliser (scikit-learn's default)."""
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    n = len(ai)
    cont = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(cont, (ai, bi), 1)
    pij = cont / n
    pi, pj = pij.sum(1), pij.sum(0)
    nz = pij > 0
    mi = float((pij[nz] * np.log(pij[nz] / (pi[:, None] * pj[None, :])[nz])).sum())
    hi = -float((pi[pi > 0] * np.log(pi[pi > 0])).sum())
    hj = -float((pj[pj > 0] * np.log(pj[pj > 0])).sum())
    denom = (hi + hj) / 2
    return mi / denom if denom > 0 else 1.0


def nmi_kmeans(embeddings: np.ndarray, labels: Sequence[int] | np.ndarray, *, seed: int = 0) -> float:
    """NMI between the labels and k-means clusters (k = number of classes) of the embeddings."""
    labels = np.asarray(labels)
    return normalized_mutual_info(labels, kmeans(embeddings, len(np.unique(labels)), seed=seed))
