"""Judging artifacts the way users will: retrieval on held-out classes, next to the PyTorch fp32 model.

Every encoder (the reference and each artifact) embeds the same evaluation images, preprocessed once by
the runtime :class:`Preprocessor` and fed batch by batch to all of them. An artifact runs through the
runtime's own backend (:func:`served`), the code the encoder serves it with, so "validated" means
"validated as served". Per artifact we report Recall@K
(the data's Ks, always with K=1), MAP@R and R-Precision, the drop against the reference in *points*
(100 x the difference of fractions), and the per-sample cosine to the reference (min and mean: the worst
image matters more than the average). An artifact passes when its Recall@1 drop is at most its
precision's threshold (:func:`score_artifacts`). Reduced JPEG decoding is judged the same way (:func:`check_decode`): the
reference model with it against the reference model with full decoding.

This module scores; the reference is :func:`proxyembed.training.inference.torch_encode_batch`, the
embedding loop :func:`proxyembed.runtime.evaluation.embed_sources`, the limits
:mod:`.options` and what is printed :mod:`.report`.

Manifest layout: ``validation`` = ``{"data", "reference", "thresholds", "k", "refused", "decode"}``; each
artifact's ``validation`` = ``{"passed", "metrics", "drop", "cosine_min", "cosine_mean", "threshold"}``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from proxyembed.data.types import DataSplit
from proxyembed.runtime import backends
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.evaluation import EncodeBatch, SplitEvaluation, embed_sources, evaluate_split
from proxyembed.runtime.manifest import ArtifactFormat, Target
from proxyembed.runtime.metrics import GATE_METRIC
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec

from .onnx_export import INPUT_NAME, OUTPUT_NAME


def served(model_file: Path, fmt: ArtifactFormat = "onnx", *, threads: int | None = None) -> EncodeBatch:
    """An exported model file run by the runtime backend that serves it (ONNX Runtime's CPU provider, or native TensorRT)."""
    backend = backends.open_backend(model_file, fmt, input_name=INPUT_NAME, output_name=OUTPUT_NAME, threads=threads)
    return functools.partial(backends.embed_batch, backend)


@dataclass(frozen=True)
class Candidate:
    """An artifact to judge: its bundle file name, precision, target and how to run it."""

    file: str
    precision: str
    target: Target
    encode: EncodeBatch


@dataclass
class Score:
    """One artifact's validation numbers (metrics are fractions, drops are points)."""

    file: str
    precision: str
    target: Target
    metrics: dict[str, float]
    drop: dict[str, float]
    cosine_min: float
    cosine_mean: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.drop[GATE_METRIC] <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        """The artifact's ``validation`` entry in the manifest."""
        return {
            "passed": self.passed,
            "metrics": self.metrics,
            "drop": self.drop,
            "cosine_min": self.cosine_min,
            "cosine_mean": self.cosine_mean,
            "threshold": self.threshold,
            "gate": GATE_METRIC,
        }


@dataclass
class ValidationReport:
    """The reference's metrics and every artifact's score, in the order they were given."""

    data: dict[str, Any]
    ks: list[int]
    reference: dict[str, float]
    scores: list[Score] = field(default_factory=list)

    def section(self, thresholds: dict[str, float], extra_refused: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The manifest's top-level ``validation`` section; refused artifacts are listed with their numbers.

        ``extra_refused`` adds artifacts refused before validation (an engine that did not build), with their reason.
        """
        refused = [{"file": s.file, "precision": s.precision, "target": s.target, **s.to_dict()} for s in self.scores if not s.passed]
        return {
            "data": self.data,
            "reference": self.reference,
            "thresholds": thresholds,
            "k": self.ks,
            "refused": refused + list(extra_refused),
        }


@dataclass
class DecodeCheck:
    """Reduced decoding judged like an artifact: the reference's metrics with full decoding and with reduced.

    ``reduced_images`` counts the evaluation images the reduced decode reads smaller; with none, both
    decodes give the same pixels, the drop is 0 and no second pass runs (``full`` is then the same metrics).
    """

    images: int
    reduced_images: int
    full: dict[str, float]
    reduced: dict[str, float]
    threshold: float

    @property
    def drop(self) -> dict[str, float]:
        return {k: round(100.0 * (self.full[k] - self.reduced[k]), 6) for k in self.full}

    @property
    def passed(self) -> bool:
        return self.drop[GATE_METRIC] <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``validation.decode`` entry."""
        return {
            "mode": "reduced",
            "passed": self.passed,
            "fallback": None if self.passed else "full",
            "images": self.images,
            "reduced_images": self.reduced_images,
            "full": self.full,
            "reduced": self.reduced,
            "drop": self.drop,
            "threshold": self.threshold,
            "gate": GATE_METRIC,
        }


def check_decode(
    data: DataSplit,
    spec: PreprocessSpec,
    reference: EncodeBatch,
    reduced_metrics: dict[str, float],
    threshold: float,
    *,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> DecodeCheck:
    """Recall@K of ``reference`` with full decoding, against ``reduced_metrics`` (its numbers with ``spec``'s reduced decoding)."""
    samples = [*data.eval, *(data.gallery or [])]
    pre = Preprocessor(spec)
    reduced_images = sum(pre.reduces(s.source) for s in samples)
    if reduced_images == 0:
        return DecodeCheck(len(samples), 0, dict(reduced_metrics), dict(reduced_metrics), threshold)
    full_spec = replace(spec, decode="full")
    ks = sorted({1, *data.ks})
    full = Preprocessor(full_spec)
    result = evaluate_split(
        data, lambda part: embed_sources((s.source for s in part), full, {"reference": reference}, batch_size=batch_size, on_batch=on_batch),
        ks=ks,
    )
    return DecodeCheck(len(samples), reduced_images, result.metrics["reference"], dict(reduced_metrics), threshold)


def _embeddings(result: SplitEvaluation, name: str) -> np.ndarray:
    """One encoder's embeddings of every evaluation image: the queries, then the gallery if any."""
    return np.concatenate([result.queries[name], *([result.gallery[name]] if result.gallery else [])])


def score_artifacts(
    data: DataSplit,
    spec: PreprocessSpec,
    reference: EncodeBatch,
    candidates: Sequence[Candidate],
    thresholds: dict[str, float],
    *,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Embed the evaluation classes with the reference and every candidate, and score each candidate."""
    if len(data.eval) < 2:
        raise BadInput(f"--data {data.name}: {len(data.eval)} evaluation image(s); validation needs at least two")
    ks = sorted({1, *data.ks})
    encoders = {"reference": reference, **{c.file: c.encode for c in candidates}}
    pre = Preprocessor(spec)
    result = evaluate_split(
        data, lambda samples: embed_sources((s.source for s in samples), pre, encoders, batch_size=batch_size, on_batch=on_batch), ks=ks
    )
    ref = result.metrics["reference"]
    report = ValidationReport(data=data.fingerprint(), ks=ks, reference=ref)
    reference = _embeddings(result, "reference")
    for c in candidates:
        m = result.metrics[c.file]
        cos = (_embeddings(result, c.file) * reference).sum(axis=1)
        report.scores.append(
            Score(
                file=c.file,
                precision=c.precision,
                target=c.target,
                metrics=m,
                drop={k: round(100.0 * (ref[k] - m[k]), 6) for k in ref},
                cosine_min=float(cos.min()),
                cosine_mean=float(cos.mean()),
                threshold=thresholds[c.precision],
            )
        )
    return report
