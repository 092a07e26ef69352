"""Measuring a bundle: embed the data with each chosen artifact through the runtime and compute its metrics.

:func:`evaluate_bundle` feeds the runtime's evaluation core (:func:`~proxyembed.runtime.evaluation.evaluate_split`,
with :func:`~proxyembed.runtime.evaluation.embed_sources` decoding each image once for every artifact).
An :class:`Evaluation` is both what a check computes and what a baseline file stores.
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

from proxyembed._version import __version__
from proxyembed.data.types import DataSplit
from proxyembed.runtime.bundle import Bundle
from proxyembed.runtime.encoder import Encoder
from proxyembed.runtime.errors import BadInput, IntegrityError, ProxyEmbedError
from proxyembed.runtime.evaluation import embed_sources, evaluate_split
from proxyembed.runtime.manifest import PRECISIONS, Precision
from proxyembed.runtime.progress import ProgressCallback
from proxyembed.runtime.system import cpu_name

ArtifactChoice = Literal["auto", Precision, "all"]
"""``--artifact``: one precision, every one the bundle has, or auto (what the runtime would pick here)."""
ARTIFACT_CHOICES: tuple[str, ...] = get_args(ArtifactChoice)


@dataclass(frozen=True)
class CheckOptions:
    """How to evaluate: artifact choice, device, threads, batch size (the same for both sides)."""

    artifact: str = "auto"
    device: str = "auto"
    threads: int | None = None
    batch_size: int = 32


@dataclass
class ArtifactRun:
    """One artifact's numbers on the data, and how they were produced (for explaining small moves)."""

    precision: str
    file: str
    sha256: str
    provider: str
    threads: int | None
    batch_size: int
    metrics: dict[str, float]
    validated: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArtifactRun:
        """A baseline's artifact entry, already checked against :data:`~.baseline.ARTIFACT_RUN_SCHEMA` by :func:`~.baseline.read_baseline`."""
        return cls(
            precision=d["precision"],
            file=d.get("file", ""),
            sha256=d.get("sha256", ""),
            provider=d.get("provider", ""),
            threads=d.get("threads"),
            batch_size=d.get("batch_size", 0),
            metrics={k: float(v) for k, v in d["metrics"].items()},
            validated=d.get("validated", True),
        )


@dataclass
class Evaluation:
    """A bundle's metrics on one data set: what a baseline file stores, and what a check computes."""

    bundle: dict[str, Any]
    data: dict[str, Any]
    ks: list[int]
    artifacts: dict[str, ArtifactRun]
    skipped: dict[str, str] = field(default_factory=dict)  # precision -> why it could not run here
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    proxyembed_version: str = ""


def evaluate_bundle(
    bundle_path: str | Path,
    split: DataSplit,
    spec: str,
    opts: CheckOptions = CheckOptions(),
    *,
    only: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> Evaluation:
    """Embed ``split``'s evaluation data with the chosen artifacts of a bundle and compute its metrics.

    ``opts.artifact`` is ``auto`` (what the runtime would pick), a precision, or ``all``; ``only`` names
    the precisions exactly instead (to run a reference bundle on the candidate's choice). ``progress``
    counts embeddings (images x artifacts).
    """
    if opts.batch_size <= 0:
        raise BadInput(f"--batch-size must be positive, got {opts.batch_size}")
    bundle = Bundle.load(bundle_path)
    encoders, skipped, notes = _encoders(bundle, opts.artifact, opts.device, opts.threads, only)
    if not encoders:
        raise BadInput(f"no artifact of bundle {bundle.path} can run on this machine: {skipped}", hint="run the check where they can run")
    by_precision = {enc.precision: enc.encode_batch for enc in encoders}
    on_batch = None if progress is None else (lambda n: progress(n * len(encoders)))
    pre = encoders[0].preprocessor  # one manifest, so one preprocessing for all of them
    result = evaluate_split(
        split, lambda samples: embed_sources((s.source for s in samples), pre, by_precision, batch_size=opts.batch_size, on_batch=on_batch)
    )
    runs = {
        enc.precision: ArtifactRun(
            precision=enc.precision,
            file=enc.artifact.file,
            sha256=enc.artifact.sha256,
            provider=enc.provider,
            threads=opts.threads,
            batch_size=opts.batch_size,
            metrics=result.metrics[enc.precision],
            validated=enc.artifact.passed,
        )
        for enc in encoders
    }
    return Evaluation(
        bundle={"path": str(bundle.path), **bundle.signature},
        data=data_fingerprint(split, spec),
        ks=sorted(set(split.ks)),
        artifacts=runs,
        skipped=skipped,
        notes=notes,
        environment=environment(),
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        proxyembed_version=__version__,
    )


def data_fingerprint(split: DataSplit, spec: str) -> dict[str, Any]:
    """The data's fingerprint (file list and labels), plus the spec as given and the query count, for the report."""
    return {**split.fingerprint(), "spec": spec, "queries": len(split.eval)}


def environment() -> dict[str, Any]:
    """What can make numbers move between machines: CPU, core count, onnxruntime version."""
    import onnxruntime

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "proxyembed": __version__,
    }


def _encoders(
    bundle: Bundle, choice: str, device: str, threads: int | None, only: Sequence[str] | None
) -> tuple[list[Encoder], dict[str, str], list[str]]:
    """Encoders for the chosen artifacts, the precisions skipped (cannot run here) and warnings raised."""
    have = [p for p in PRECISIONS if any(a.precision == p for a in bundle.manifest.artifacts)]
    if choice not in ARTIFACT_CHOICES:
        raise BadInput(f"--artifact '{choice}' is unknown", hint=f"use one of {', '.join(ARTIFACT_CHOICES)}")
    wanted = list(only) if only is not None else (have if choice == "all" else [choice])
    for precision in wanted:
        if precision != "auto" and precision not in have:
            raise BadInput(
                f"bundle {bundle.path} has no {precision} artifact (it has {', '.join(have)})",
                hint="choose one it has with --artifact, or --artifact all",
            )
    encoders, skipped, notes = [], {}, []
    for precision in wanted:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                encoders.append(Encoder(bundle, precision=precision, device=device, threads=threads))  # type: ignore[arg-type]
            except IntegrityError:
                raise
            except ProxyEmbedError as exc:
                if choice != "all":
                    raise
                skipped[precision] = str(exc)
        notes += [f"{bundle.path.name}: {w.message}" for w in caught]
    return encoders, skipped, notes
