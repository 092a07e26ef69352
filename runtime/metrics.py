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

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from .errors import BadInput

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)
GATE_METRIC = "recall@1"
"""The metric an artifact or a bundle is gated on, by export validation and by ``proxyembed check`` alike."""
# k-means for NMI: float64 Lloyd with k-means++ up to this many points x clusters (CUB, Cars: under 1e6),
# blocked float32 Lloyd with random seeding above it (SOP: 60k x 11k = 7e8), LARGE_KMEANS_ITERS steps.
EXACT_KMEANS_CELLS = 2**22
LARGE_KMEANS_ITERS = 4
# NMI "auto": computed up to this many evaluation items (CUB 5,924, Cars 8,131), skipped above (SOP 60,502),
# where k-means with k = classes costs as much as all the neighbour metrics together
# (benchmarks/results/eval_speed.md). "always" computes it at any size.
NMI_AUTO_MAX_ITEMS = 20_000
NmiMode = Literal["auto", "always", "never"]


def nmi_wanted(n_items: int, mode: NmiMode | bool) -> bool:
    """Whether NMI is computed for ``n_items`` all-vs-all items under ``mode`` (True / False mean always / never)."""
    if mode == "auto":
        return n_items <= NMI_AUTO_MAX_ITEMS
    return mode in (True, "always")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32 (all-zero rows stay zero): what makes a dot product a cosine."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


def knn(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours by dot product: (indices, similarities), each (Nq, k), best first.

    With ``exclude_self`` the queries are the gallery and each item's own row is never returned.
    Ties are broken by the lower gallery index, so results are deterministic. ``block_size`` query
    rows are compared at a time (default: a block of similarities near 256 MiB, whatever the gallery).
    """
    queries, gallery, k = _knn_inputs(queries, gallery, k, exclude_self)
    block_size = block_size or _block_rows(len(gallery))
    idx_out = np.empty((len(queries), k), np.int64)
    sim_out = np.empty((len(queries), k), np.float32)
    for start, idx, sims in _knn_blocks(queries, gallery, k, exclude_self, block_size):
        idx_out[start : start + len(idx)] = idx
        sim_out[start : start + len(idx)] = np.take_along_axis(sims, idx, axis=1)
    return idx_out, sim_out


def _knn_inputs(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray, int]:
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise BadInput(f"knn: queries {queries.shape} and gallery {gallery.shape} must be 2-D with the same width")
    return queries, gallery, max(0, min(k, gallery.shape[0] - (1 if exclude_self else 0)))


def _block_rows(n_gallery: int) -> int:
    """Query rows per block: 1024, fewer for galleries so large that a block would pass 256 MiB."""
    return int(np.clip(2**26 // max(n_gallery, 1), 1, 1024))


def _knn_blocks(
    queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool, block_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first query row, top-``k`` indices, the block's similarities) for each block of query rows."""
    for start in range(0, len(queries), block_size):
        sims = queries[start : start + block_size] @ gallery.T
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        yield start, _top_k(sims, k), sims


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest values, by value descending then index ascending.

    A selection over every full row costs several times the matrix product that made it. Instead the
    columns are dealt into ``m = 2k`` disjoint groups (column index modulo m); the k-th largest of the
    m group maxima is a threshold that at least k values of the row reach (k distinct groups each hold
    one), and at SOP's size only about 1.4k do. Only those are ranked. Every value tied with the
    k-th largest reaches the threshold too, so the result is exact.
    """
    n_rows, n = sims.shape
    if k == 0:
        return np.zeros((n_rows, 0), np.int64)
    if k >= n:
        return _rank(sims, np.arange(n, dtype=np.uint64))[:, :k]
    groups = min(2 * k, n)
    maxima = sims[:, : groups * (n // groups)].reshape(n_rows, n // groups, groups).max(axis=1)
    threshold = np.partition(maxima, groups - k, axis=1)[:, groups - k]
    rows, cols = np.divmod(np.flatnonzero(sims >= threshold[:, None]), n)  # row-major order
    counts = np.bincount(rows, minlength=n_rows)
    keys = np.full((n_rows, int(counts.max())), np.iinfo(np.uint64).max, np.uint64)  # padding sorts last
    keys[rows, np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)] = _keys(sims[rows, cols], cols)
    return (np.sort(keys, axis=1)[:, :k] & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _keys(vals: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is value descending, then column ascending (columns below 2**32)."""
    bits = (vals.astype(np.float32) + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into 0.0
    ascending = np.where(bits >> np.uint32(31) == 1, ~bits, bits | np.uint32(1 << 31))  # float order as uint order
    return ((~ascending).astype(np.uint64) << np.uint64(32)) | cols.astype(np.uint64)


def _rank(sims: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """All columns of each row of ``sims``, ordered by value descending then column ascending."""
    keys = np.sort(_keys(sims, np.broadcast_to(cols, sims.shape)), axis=1)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)


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
    nmi: NmiMode | bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Recall@K for each K, MAP@R and R-Precision (and NMI, see :func:`nmi_wanted`), keyed ``recall@1``, ``map@r``, ...

    Without ``gallery`` it is all-vs-all on ``embeddings`` with the query excluded (CUB / Cars / SOP);
    with ``gallery`` the ``embeddings`` are queries against it (In-Shop). Queries without any relevant
    item are skipped for MAP@R / R-Precision and count as misses for Recall@K.

    One pass over blocks of queries gives every neighbour metric, keeping per query only what the
    averages need, so memory stays at a block of similarities (SOP's 60k items fit in well under 2 GiB).
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
    q, g, depth = _knn_inputs(q, g, max(max(ks), int(r.max(initial=0))), all_vs_all)
    found = np.zeros((len(ks), len(q)), bool)
    ap = np.zeros(len(q))
    r_prec = np.zeros(len(q))
    ranks = np.arange(1, depth + 1)
    for start, idx, _ in _knn_blocks(q, g, depth, all_vs_all, _block_rows(len(g))):
        stop = start + len(idx)
        hits = g_lab[idx] == q_lab[start:stop, None]
        for i, k in enumerate(ks):
            found[i, start:stop] = hits[:, :k].any(axis=1)
        rel = hits & (ranks[None, :] <= r[start:stop, None])
        precision_at_i = np.cumsum(rel, axis=1) / ranks[None, :]
        ap[start:stop] = (precision_at_i * rel).sum(axis=1)
        r_prec[start:stop] = rel.sum(axis=1)
    out: dict[str, float] = {f"recall@{k}": float(found[i].mean()) for i, k in enumerate(ks)}
    valid = r > 0
    if valid.any():
        out["map@r"] = float((ap[valid] / r[valid]).mean())
        out["r_precision"] = float((r_prec[valid] / r[valid]).mean())
    else:
        out["map@r"] = out["r_precision"] = 0.0
    if all_vs_all and nmi_wanted(len(q), nmi):
        out["nmi"] = nmi_kmeans(q, q_lab, seed=seed)
    return out


def kmeans(x: np.ndarray, n_clusters: int, *, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster assignments from Lloyd's k-means (deterministic for a seed).

    For small problems (N x clusters up to :data:`EXACT_KMEANS_CELLS`) this is float64 Lloyd with
    k-means++ seeding, as it always was. Above that, the seeding alone would make ``clusters`` passes
    over the data and each step an N x clusters float64 matrix, so :func:`_kmeans_large` runs instead.
    """
    x = np.asarray(x)
    if len(x) * min(n_clusters, len(x)) > EXACT_KMEANS_CELLS:
        return _kmeans_large(x, n_clusters, seed=seed)
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


def _kmeans_large(
    x: np.ndarray, n_clusters: int, *, seed: int = 0, iters: int = LARGE_KMEANS_ITERS, block: int | None = None
) -> np.ndarray:
    """k-means for SOP-size problems without ever holding N x clusters: float32 Lloyd in blocks of rows.

    Seeded with distinct random points (k-means++ would cost one pass over the data per cluster) and
    stopped after ``iters`` steps or when no assignment changes. Each step costs N x clusters x dim
    multiply-adds, a fifth of the all-pairs similarity pass at SOP's size, so NMI stays a bounded part
    of an evaluation (benchmarks/results/eval_speed.md). Empty clusters keep their centre. ``block``
    rows are assigned at a time (default: a block x clusters matrix of 256 MiB at most); it changes
    memory, never the result.
    """
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    n_clusters = min(n_clusters, n)
    centers = x[np.sort(rng.choice(n, n_clusters, replace=False))].copy()
    block = block or int(np.clip(2**26 // n_clusters, 64, 4096))
    assign = np.full(n, -1)
    for _ in range(iters):
        half_sq = 0.5 * (centers**2).sum(1)  # argmin |x - c|^2 = argmax (x.c - |c|^2 / 2)
        new = np.concatenate([(x[s : s + block] @ centers.T - half_sq).argmax(1) for s in range(0, n, block)])
        if np.array_equal(new, assign):
            break
        assign = new
        order = np.argsort(assign, kind="stable")
        members, starts = np.unique(assign[order], return_index=True)
        sums = np.add.reduceat(x[order], starts, axis=0, dtype=np.float64)
        centers[members] = (sums / np.diff(np.append(starts, n))[:, None]).astype(np.float32)
    return assign


def normalized_mutual_info(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """NMI with the arithmetic-mean normaliser (scikit-learn's default).

    Only the non-empty cells of the contingency table are formed (at most one per item): SOP's 11k
    classes against 11k clusters would make a dense float64 table of 1 GiB, and the terms on it three.
    """
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    ai, bi = ai.reshape(-1).astype(np.int64), bi.reshape(-1).astype(np.int64)
    n = len(ai)
    cells, counts = np.unique(ai * (int(bi.max()) + 1) + bi, return_counts=True)
    pij = counts / n
    pi, pj = np.bincount(ai) / n, np.bincount(bi) / n
    row, col = np.divmod(cells, int(bi.max()) + 1)
    mi = float((pij * np.log(pij / (pi[row] * pj[col]))).sum())
    hi = -float((pi * np.log(pi)).sum())  # every row and column of the inverse indices is non-empty
    hj = -float((pj * np.log(pj)).sum())
    denom = (hi + hj) / 2
    return mi / denom if denom > 0 else 1.0


def nmi_kmeans(embeddings: np.ndarray, labels: Sequence[int] | np.ndarray, *, seed: int = 0) -> float:
    """NMI between the labels and k-means clusters (k = number of classes) of the embeddings."""
    labels = np.asarray(labels)
    return normalized_mutual_info(labels, kmeans(embeddings, len(np.unique(labels)), seed=seed))
