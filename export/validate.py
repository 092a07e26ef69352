"""Judging artifacts the way users will: retrieval on held-out classes, next to the PyTorch fp32 model.

Every runner (the reference and each artifact) embeds the same evaluation images, preprocessed once by
the runtime :class:`Preprocessor` and fed batch by batch to all of them. An artifact runs through the
runtime's own backend (:func:`served`), the code the encoder serves it with, so "validated" means
"validated as served". Per artifact we report Recall@K
(the data's Ks, always with K=1), MAP@R and R-Precision, the drop against the reference in *points*
(100 x the difference of fractions), and the per-sample cosine to the reference (min and mean: the worst
image matters more than the average). An artifact passes when its Recall@1 drop is at most its
precision's threshold. Reduced JPEG decoding is judged the same way (:func:`check_decode`): the
reference model with it against the reference model with full decoding.

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

from proxyembed.data.types import DataSplit, Sample
from proxyembed.runtime import backends
from proxyembed.runtime.errors import BadInput, require
from proxyembed.runtime.evaluation import SplitEvaluation, evaluate_split
from proxyembed.runtime.manifest import ArtifactFormat
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec

from .onnx_export import INPUT_NAME, OUTPUT_NAME

Runner = Callable[[np.ndarray], np.ndarray]
"""A preprocessed NCHW float32 batch in, (N, D) L2-normalised float32 embeddings out."""

DEFAULT_MAX_DROP: dict[str, float] = {"fp32": 0.1, "fp16": 0.5, "int8": 1.0, "decode": 0.3}
"""Allowed Recall@1 drop in points per precision, and for reduced JPEG decoding against full decoding."""
GATE_METRIC = "recall@1"


def torch_reference(model: Any) -> Runner:
    """The PyTorch fp32 model in eval mode, gradients off: the reference every artifact is judged against."""
    torch = require("torch", "train")
    model = model.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()
        return backends.l2_normalize(out)

    return run


def served(model_file: Path, fmt: ArtifactFormat = "onnx", *, threads: int | None = None) -> Runner:
    """An exported model file run by the runtime backend that serves it (ONNX Runtime's CPU provider, or native TensorRT)."""
    backend = backends.open_backend(model_file, fmt, input_name=INPUT_NAME, output_name=OUTPUT_NAME, threads=threads)
    return functools.partial(backends.embed_batch, backend)


@dataclass(frozen=True)
class Candidate:
    """An artifact to judge: its bundle file name, precision, target device and a runner for it."""

    file: str
    precision: str
    target: str
    run: Runner


@dataclass
class Score:
    """One artifact's validation numbers (metrics are fractions, drops are points)."""

    file: str
    precision: str
    target: str
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
    reference: Runner,
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
    result = evaluate_split(
        data, lambda part: embed_all(part, full_spec, {"reference": reference}, batch_size=batch_size, on_batch=on_batch), ks=ks
    )
    return DecodeCheck(len(samples), reduced_images, result.metrics["reference"], dict(reduced_metrics), threshold)


def parse_max_drop(values: Sequence[str]) -> dict[str, float]:
    """``["fp16=0.5,int8=1.0", "decode=0.3"]`` -> thresholds in points, over :data:`DEFAULT_MAX_DROP`."""
    out = dict(DEFAULT_MAX_DROP)
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            prec, sep, num = item.partition("=")
            if not sep or prec.strip() not in DEFAULT_MAX_DROP:
                keys = ", ".join(DEFAULT_MAX_DROP)
                raise BadInput(f"--max-recall-drop '{item}' is not KEY=POINTS", hint=f"keys: {keys}; e.g. --max-recall-drop fp16=0.5,int8=1.0")
            try:
                out[prec.strip()] = float(num)
            except ValueError as exc:
                raise BadInput(f"--max-recall-drop '{item}': '{num}' is not a number of points") from exc
    return out


def embed_all(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    runners: dict[str, Runner],
    *,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Embeddings of ``samples`` from every runner, each image decoded once."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    for batch in Preprocessor(spec).batches((s.source for s in samples), batch_size):
        for name, run in runners.items():
            out[name].append(run(batch))
        if on_batch:
            on_batch(len(batch))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _embeddings(result: SplitEvaluation, name: str) -> np.ndarray:
    """One runner's embeddings of every evaluation image: the queries, then the gallery if any."""
    return np.concatenate([result.queries[name], *([result.gallery[name]] if result.gallery else [])])


def validate(
    data: DataSplit,
    spec: PreprocessSpec,
    reference: Runner,
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
    runners = {"reference": reference, **{c.file: c.run for c in candidates}}
    result = evaluate_split(data, lambda samples: embed_all(samples, spec, runners, batch_size=batch_size, on_batch=on_batch), ks=ks)
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
