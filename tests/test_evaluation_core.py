"""The one evaluation core: modes, several models per embedding call, call order, and the three callers using it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proxyembed.runtime import evaluation
from proxyembed.runtime.evaluation import evaluate_split
from proxyembed.runtime.metrics import retrieval_metrics


@dataclass(frozen=True)
class _Sample:
    source: int
    label: int


@dataclass
class _Split:
    eval: list[_Sample]
    gallery: list[_Sample] | None = None
    ks: tuple[int, ...] = (1, 2)


def _vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


TABLE = _vectors(40, 0)


def _embed(calls: list[list[int]]):
    def embed(samples):
        calls.append([s.source for s in samples])
        rows = TABLE[[s.source for s in samples]]
        return {"a": rows, "b": rows[:, ::-1].copy()}

    return embed


def test_all_vs_all_two_models_one_call() -> None:
    split = _Split([_Sample(i, i % 5) for i in range(20)])
    calls: list[list[int]] = []
    result = evaluate_split(split, _embed(calls), nmi=True)
    assert calls == [list(range(20))] and result.gallery is None
    labels = np.arange(20) % 5
    assert result.metrics["a"] == retrieval_metrics(TABLE[:20], labels, ks=(1, 2), nmi=True)
    assert result.metrics["b"] == retrieval_metrics(TABLE[:20, ::-1], labels, ks=(1, 2), nmi=True)


def test_query_gallery_embeds_queries_then_gallery_and_skips_nmi() -> None:
    split = _Split([_Sample(i, i % 4) for i in range(8)], [_Sample(i, i % 4) for i in range(8, 40)])
    calls: list[list[int]] = []
    result = evaluate_split(split, _embed(calls), ks=(1, 4), nmi=True)
    assert calls == [list(range(8)), list(range(8, 40))]
    expected = retrieval_metrics(TABLE[:8], np.arange(8) % 4, ks=(1, 4), gallery=TABLE[8:], gallery_labels=np.arange(8, 40) % 4)
    assert result.metrics["a"] == expected and "nmi" not in result.metrics["a"]
    np.testing.assert_array_equal(result.gallery["b"], TABLE[8:, ::-1])


def test_training_check_and_export_all_use_the_core() -> None:
    """Training evaluation, export validation and check compute metrics only through the runtime's core,
    and export and check embed a split with several encoders through its one loop."""
    from proxyembed.check import measure
    from proxyembed.export import validate
    from proxyembed.training import model_eval

    for module in (measure, validate, model_eval):
        assert module.evaluate_split is evaluation.evaluate_split
        assert not hasattr(module, "retrieval_metrics")  # no second path to the metrics
    for module in (measure, validate):
        assert module.embed_sources is evaluation.embed_sources


def test_embed_sources_decodes_each_image_once_for_every_encoder() -> None:
    """Each batch is preprocessed once and given to every encoder, in order; on_batch counts images."""
    from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec

    images = [np.full((6, 6, 3), 40 * i, np.uint8) for i in range(5)]
    pre = Preprocessor(PreprocessSpec(resize=4, crop=4))
    seen: list[np.ndarray] = []

    def first(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)
        return batch.mean(axis=(2, 3))

    done: list[int] = []
    out = evaluation.embed_sources(images, pre, {"a": first, "b": lambda batch: batch[:, :, 0, 0]}, batch_size=2, on_batch=done.append)
    assert done == [2, 2, 1] and [len(b) for b in seen] == [2, 2, 1]
    expected = pre(images)
    np.testing.assert_allclose(out["a"], expected.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(out["b"], expected[:, :, 0, 0])
    assert evaluation.embed_sources([], pre, {"a": first})["a"].shape == (0, 0)
