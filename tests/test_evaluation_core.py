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
    """Training evaluation, export validation and check compute metrics only through the runtime's core."""
    from proxyembed.check import evaluation as check_evaluation
    from proxyembed.export import validate
    from proxyembed.training import evaluate as training_evaluate

    for module in (check_evaluation, validate, training_evaluate):
        assert module.evaluate_split is evaluation.evaluate_split
        assert not hasattr(module, "retrieval_metrics")  # no second path to the metrics
