"""Retrieval metrics on hand-computed cases and against brute-force / scikit-learn oracles."""

from __future__ import annotations

import numpy as np
import pytest

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.metrics import kmeans, knn, nmi_kmeans, normalized_mutual_info, retrieval_metrics

# Four unit vectors on a quarter circle; classes {a, b} and {c, d}.
# Similarities: ab .8, ac .6, ad 0, bc .96, bd .6, cd .8.
# Nearest other item: a->b (hit), b->c (miss), c->b (miss), d->c (hit): R@1 = 0.5; second
# neighbours of b and c are a and d (hits): R@2 = 1. Every class has R = 1 other member,
# so MAP@R = R-Precision = R@1 = 0.5.
TOY = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], np.float32)
TOY_LABELS = [0, 0, 1, 1]


def test_hand_computed_all_vs_all() -> None:
    m = retrieval_metrics(TOY, TOY_LABELS, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["recall@2"] == pytest.approx(1.0)
    assert m["map@r"] == pytest.approx(0.5)
    assert m["r_precision"] == pytest.approx(0.5)


def test_map_at_r_rewards_order_within_r() -> None:
    # class 0 has three members; query 0 sees [hit, miss, hit] in its first R=2 ... only 1 hit in R
    emb = np.array([[1, 0], [0.9, 0.436], [0.95, 0.312], [0.5, 0.866], [-1, 0]], np.float32)
    labels = [0, 0, 1, 0, 1]
    # query 0: sims to 1:.9, 2:.95, 3:.5, 4:-1 -> order 2(miss), 1(hit), 3(hit); R = 2
    # AP@R = (0 + 1/2) / 2 = 0.25 ; R-precision = 1/2
    m = retrieval_metrics(emb[:1], labels[:1], gallery=emb[1:], gallery_labels=labels[1:], ks=(1,))
    assert m["map@r"] == pytest.approx(0.25)
    assert m["r_precision"] == pytest.approx(0.5)
    assert m["recall@1"] == 0.0


def test_query_gallery_mode_does_not_exclude_identical_items() -> None:
    m = retrieval_metrics(TOY, TOY_LABELS, gallery=TOY, gallery_labels=TOY_LABELS, ks=(1,))
    assert m["recall@1"] == 1.0  # each query finds itself in the gallery


def test_knn_blocks_match_full_computation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(257, 8)).astype(np.float32)
    full_idx, full_sim = knn(x, x, 5, exclude_self=True, block_size=10_000)
    blk_idx, blk_sim = knn(x, x, 5, exclude_self=True, block_size=16)
    np.testing.assert_array_equal(full_idx, blk_idx)
    np.testing.assert_allclose(full_sim, blk_sim, rtol=1e-6)
    assert not (full_idx == np.arange(257)[:, None]).any()
    brute = np.argsort(-(x @ x.T - np.eye(257) * 1e9), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(full_idx, brute)


def test_knn_k_larger_than_gallery_returns_all() -> None:
    idx, sim = knn(TOY, TOY, 10, exclude_self=True)
    assert idx.shape == (4, 3)
    assert (np.diff(sim, axis=1) <= 0).all()
    assert knn(TOY[:1], TOY[:1], 5, exclude_self=True)[0].shape == (1, 0)  # nothing but itself


def test_nmi_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 200), rng.integers(0, 7, 200)
    assert normalized_mutual_info(a, b) == pytest.approx(sk.normalized_mutual_info_score(a, b), abs=1e-10)
    assert normalized_mutual_info(a, a) == pytest.approx(1.0)


def test_nmi_from_non_empty_cells_equals_the_dense_table() -> None:
    """Many classes and clusters (most cells empty): the same value as the full contingency table gives."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 400, 3000) * 7 - 50  # sparse, negative and non-contiguous label values
    b = np.where(rng.random(3000) < 0.7, a, rng.integers(0, 450, 3000))
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    cont = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(cont, (ai, bi), 1)
    pij = cont / len(a)
    pi, pj = pij.sum(1), pij.sum(0)
    nz = pij > 0
    mi = (pij[nz] * np.log(pij[nz] / np.outer(pi, pj)[nz])).sum()
    dense = mi / ((-(pi * np.log(pi)).sum() - (pj * np.log(pj)).sum()) / 2)
    assert normalized_mutual_info(a, b) == pytest.approx(dense, abs=1e-12)
    assert normalized_mutual_info([str(v) for v in a], b) == pytest.approx(dense, abs=1e-12)
    assert normalized_mutual_info(np.zeros(5), np.zeros(5)) == 1.0  # one class, one cluster: no entropy


def test_large_kmeans_blocks_change_memory_not_clusters() -> None:
    from proxyembed.runtime.metrics import _kmeans_large

    rng = np.random.default_rng(6)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    np.testing.assert_array_equal(_kmeans_large(x, 37, block=3), _kmeans_large(x, 37))


def test_kmeans_recovers_separated_clusters() -> None:
    rng = np.random.default_rng(2)
    centers = np.eye(4) * 10
    x = np.concatenate([c + rng.normal(size=(30, 4)) for c in centers])
    labels = np.repeat(np.arange(4), 30)
    assert normalized_mutual_info(labels, kmeans(x, 4, seed=0)) == pytest.approx(1.0)
    assert nmi_kmeans(x, labels) == pytest.approx(1.0)


def test_ties_go_to_the_lower_index() -> None:
    """Six identical vectors: every neighbour ties, so the ranking is the index order (self excluded).

    By hand with labels [0, 0, 1, 1, 2, 2]: items 0 and 1 find each other first (hits), items 2..5 find
    item 0 first (misses): R@1 = 2/6. The first two neighbours of 2..5 are 0 and 1: R@2 = 2/6. The first four
    of item 2 are 0, 1, 3, 4 and of item 3 are 0, 1, 2, 4 (hits), of items 4 and 5 are 0..3 (misses): R@4 = 4/6.
    Eight exceeds the five others: R@8 = 1. Each class has R = 1 other member: MAP@R = R-Precision = R@1.
    """
    emb = np.ones((6, 3), np.float32) / np.sqrt(3)
    idx, _ = knn(emb, emb, 5, exclude_self=True)
    np.testing.assert_array_equal(idx, [[j for j in range(6) if j != i] for i in range(6)])
    m = retrieval_metrics(emb, [0, 0, 1, 1, 2, 2])
    expected = {"recall@1": 2 / 6, "recall@2": 2 / 6, "recall@4": 4 / 6, "recall@8": 1.0, "map@r": 2 / 6, "r_precision": 2 / 6}
    assert m == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(embeddings=TOY, labels=[0, 1]),
        dict(embeddings=TOY[:1], labels=[0]),
        dict(embeddings=TOY, labels=TOY_LABELS, ks=(0,)),
        dict(embeddings=TOY, labels=TOY_LABELS, gallery=TOY, gallery_labels=[0]),
    ],
)
def test_bad_metric_inputs(kwargs: dict) -> None:
    with pytest.raises(BadInput):
        retrieval_metrics(**kwargs)


@pytest.mark.parametrize("k", [1, 7, 60, 400, 1999])
def test_top_k_is_exact_with_ties_at_the_boundary(k: int) -> None:
    """The threshold-then-rank selection equals a full stable sort, ties going to the lower index."""
    rng = np.random.default_rng(k)
    x = np.round(rng.normal(size=(2000, 4)), 1).astype(np.float32)  # coarse values: many exact ties
    x[100:160] = x[5]  # duplicates of one item
    idx, sims = knn(x[:300], x, k, exclude_self=True, block_size=128)
    full = x[:300] @ x.T
    full[np.arange(300), np.arange(300)] = -np.inf
    brute = np.argsort(-full, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, brute)
    np.testing.assert_array_equal(sims, np.take_along_axis(full, brute, axis=1))


def test_large_kmeans_path_clusters_without_n_by_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above EXACT_KMEANS_CELLS k-means runs blocked in float32 and still finds well-separated classes."""
    import proxyembed.runtime.metrics as metrics

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 16))
    labels = np.repeat(np.arange(40), 25)
    x = (centres[labels] + 0.05 * rng.normal(size=(1000, 16))).astype(np.float32)
    exact = nmi_kmeans(x, labels)
    monkeypatch.setattr(metrics, "EXACT_KMEANS_CELLS", 1000)
    large = nmi_kmeans(x, labels)
    assert exact > 0.99 and 0.9 < large <= 1.0
    assert large == nmi_kmeans(x, labels)  # deterministic for a seed


def test_nmi_auto_skips_large_splits_and_always_forces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """"auto" computes NMI up to NMI_AUTO_MAX_ITEMS items only; "always" at any size; never for query -> gallery."""
    import proxyembed.runtime.metrics as metrics

    assert "nmi" in retrieval_metrics(TOY, TOY_LABELS, ks=(1,), nmi="auto")
    monkeypatch.setattr(metrics, "NMI_AUTO_MAX_ITEMS", 3)
    auto = retrieval_metrics(TOY, TOY_LABELS, ks=(1,), nmi="auto")
    assert "nmi" not in auto and auto["recall@1"] == pytest.approx(0.5)
    assert retrieval_metrics(TOY, TOY_LABELS, ks=(1,), nmi="always")["nmi"] == nmi_kmeans(TOY, TOY_LABELS)
    assert "nmi" not in retrieval_metrics(TOY, TOY_LABELS, ks=(1,), nmi="never")
    assert "nmi" not in retrieval_metrics(TOY[:2], [0, 1], ks=(1,), gallery=TOY, gallery_labels=TOY_LABELS, nmi="always")
