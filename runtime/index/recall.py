"""Recall calibration of an :class:`~.core.Index`: recall@10 against exact search, ``ef`` and then ``M`` raised until it is reached.

Stored items are easier queries than new images (they are linked into the graph), so a build measures on
held-out items: rows added with ``held_out=True`` stay out of the graph until the calibration has used
them as queries (``proxyembed index`` holds out a random sample). That calibration also measures the same
ef with stored items as queries; the difference (the gap) is recorded, and a later calibration without
held-out items (``serve`` after the gallery has grown) asks stored items for the target plus that gap.
The truth is exact float32 search where the index kept float32 rows; a quantized index also measures
exact search on its stored vectors (the ceiling no graph setting can beat).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..metrics import knn
from .storage import in_space

if TYPE_CHECKING:
    from .core import Index

# What save() calibrates to reach: recall@10 of held-out queries against exact float32 search, on up to
# CALIBRATION_QUERIES queries; ef grows by a quarter (EF_STEP) up to MAX_EF, then M doubles (a rebuild) up to MAX_M.
TARGET_RECALL = 0.99
# Stored vectors are easier queries than new images (they are linked into the graph): at 100k the
# self-measured recall@10 was 0.9986 where held-out queries gave 0.9938. A calibration on stored items
# adds the gap its gallery last measured, or this one when it never measured it.
DEFAULT_GAP = 0.005
RECALL_K = 10
CALIBRATION_QUERIES = 1000
MAX_EF = 1024
# ef rises by this factor a step. Doubling landed up to 2x above the ef a gallery needs, and search time grows
# with ef: at 1M 128-d items f32 passed at 1024 where 512 read 0.9919 on other held-out queries. A step of
# 1.25 lands at most 1.25x above, for a few more rounds of the calibration's searches (no rebuild, each a
# search of the calibration's queries): at 100k 512-d int8 it stopped at ef=80 in two builds where 1.5 went
# from 64 to 96 (held-out recall@10 0.9953 at 80; docs/benchmarks.md, "Calibration noise").
EF_STEP = 1.25
MAX_M = 64
# A quantized index cannot beat exact search on its own stored vectors; when that ceiling is below the
# target, calibration stops raising ef and M once the graph is this close to it (the gate then refuses).
# A ceiling at or just above the target (within this) still gets ef raised to the target: at 512-d, 100k
# clustered vectors, int8's ceiling of 0.9909 stopped calibration at 0.9899 (ef=128) where other held-out
# queries read 0.9916 (docs/benchmarks.md, "512-d").
CEILING_SLACK = 0.002
# Calibration stops when its mean recall minus this many standard errors (per-query recall's std / sqrt(n))
# reaches the target: one-sided 95%. Per-query recall is heavy-tailed, so near 0.99 a 1,000-query mean is
# good to about +-0.004: at 100k 512-d int8, ef=48 read 0.9887 on 10,000 new queries and one 1,000-query
# sample in three still passed 0.99; with the margin calibration stops at ef=64, 0.9936
# (benchmarks/calibration_noise.py, docs/benchmarks.md "Calibration noise").
CONFIDENCE_Z = 1.64


def calibrate(index: Index, *, target: float, queries: int, max_ef: int, max_M: int, seed: int) -> dict[str, Any]:
    """:meth:`Index.calibrate` (see there): measure, raise ef then M, insert the held-out items, record the result."""
    with index._lock.write():
        held = index._held
        index._held = []
        ef = index._ef
        result: dict[str, Any] = {"queries": 0, "method": "held-out" if held else "stored"}
        if len(index) <= RECALL_K + 1:  # every live item is in every answer
            measured, ceiling = 1.0, 1.0
            goal = target
        else:
            had_matrix = index._matrix is not None
            live, stored = index._live_matrix()
            # float32 rows of the live items where the index kept them: one copy for the whole calibration
            reference = index._reference[live] if index._reference is not None else stored
            gap = float(index._recall.get("gap", DEFAULT_GAP))
            if held:
                probe = in_space(np.concatenate([v for v, _, _ in held])[:queries], index.space)
                own, goal = None, target
            else:
                probe, own = _stored_probe(live, reference, queries, seed)
                goal = min(target + gap, 1.0)
            truth, ceiling = _truth(index, probe, own, live, stored, reference)
            # Within CEILING_SLACK of the stored vectors' exact answer more links win almost nothing: a ceiling
            # below the goal stops ef and M there; one at or just above it keeps raising ef (cheap) to the goal,
            # and M only while the graph is farther than that from the ceiling.
            near = ceiling - CEILING_SLACK
            while True:
                measured, error = _graph_recall(index._hnsw, probe, own, truth, ef)
                # the mean must pass with its margin, unless the graph is already within the slack of the ceiling
                passed = measured >= goal and (measured - CONFIDENCE_Z * error >= goal or measured >= near)
                if passed or (ceiling < goal and measured >= near):
                    break
                if ef < max_ef:
                    ef = min(max(ef + 1, int(ef * EF_STEP)), max_ef)
                elif index.M < max_M and measured < near:
                    index._rebuild(min(2 * index.M, max_M), live, reference)
                    ef = index._ef
                else:
                    break
            if held:
                stored_probe, stored_own = _stored_probe(live, reference, queries, seed)
                stored_truth, _ = _truth(index, stored_probe, stored_own, live, stored, reference)
                stored_recall, _ = _graph_recall(index._hnsw, stored_probe, stored_own, stored_truth, ef)
                result["gap"] = round(max(0.0, stored_recall - measured), 4)
                result[f"stored_recall@{RECALL_K}"] = round(stored_recall, 4)
            elif "gap" in index._recall:
                result["gap"] = index._recall["gap"]
            result["queries"] = len(probe)
            if not had_matrix:
                index._matrix = None  # do not keep an N x dim copy alive for a save
            index._ef = ef
        index._hnsw.set_ef(ef)
        for vectors, ids, metas in held:
            index._insert(vectors, ids, metas)
        index._recall = {
            f"recall@{RECALL_K}": round(measured, 4),
            "ef": ef,
            "M": index.M,
            **result,
            "count": len(index),
            "target": round(goal, 4),
            "truth": "float32" if index.vectors == "f32" or index._reference is not None else "stored vectors",
            f"ceiling@{RECALL_K}": round(ceiling, 4),
        }
        return dict(index._recall)


def _stored_probe(live: np.ndarray, reference: np.ndarray, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``queries`` stored items as queries (rows of ``reference``, float32 where the index kept it) and their labels."""
    pick = np.sort(np.random.default_rng(seed).choice(len(live), min(queries, len(live)), replace=False))
    return reference[pick], live[pick]


def _truth(
    index: Index, probe: np.ndarray, own: np.ndarray | None, live: np.ndarray, stored: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, float]:
    """Exact top labels of ``probe`` on ``reference``, and the recall of the graph's exact search on the ``stored`` vectors."""
    k = RECALL_K + (own is not None)
    truth = live[knn(probe, reference, k)[0]]
    if own is not None:
        truth = _drop_self(truth, own)
    if reference is stored:
        return truth, 1.0
    found = live[knn(index._hnsw.as_stored(probe), stored, k)[0]]
    return truth, _overlap(found if own is None else _drop_self(found, own), truth)


def _graph_recall(graph: Any, queries: np.ndarray, own: np.ndarray | None, truth: np.ndarray, ef: int) -> tuple[float, float]:
    """recall@K of ``graph`` at ``ef`` for ``queries`` against ``truth`` (their own labels dropped for stored queries), and its standard error."""
    k = RECALL_K + (own is not None)
    graph.set_ef(max(ef, k))
    try:
        found, _ = graph.knn_query(queries, k=k)
    except RuntimeError:  # the walk found too few live items (heavy deletions): count it as a miss
        return 0.0, 0.0
    found = found.astype(np.int64)
    per_query = _hits(found if own is None else _drop_self(found, own), truth).mean(axis=1)
    return float(per_query.mean()), float(per_query.std() / np.sqrt(len(per_query)))


def _drop_self(rows: np.ndarray, own: np.ndarray) -> np.ndarray:
    """The first ``RECALL_K`` labels of each row of ``RECALL_K + 1`` without the row's own label."""
    keep = rows != own[:, None]
    keep[keep.all(axis=1), -1] = False  # the query was not among them: drop the last instead
    return rows[keep].reshape(len(rows), RECALL_K)


def _hits(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each ``truth`` label (rows of RECALL_K), whether ``found``'s row also holds it."""
    return (found[:, :, None] == truth[:, None, :]).any(axis=2)


def _overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the ``truth`` labels that ``found`` also holds: recall@K."""
    return float(_hits(found, truth).mean())
