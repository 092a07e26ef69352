"""``proxyembed check``: gate a bundle on retrieval accuracy against a stored baseline or another bundle.

Torch-free by design (DESIGN.md): a CI runner needs only the runtime. Each chosen artifact embeds the
evaluation data through the runtime :class:`Encoder` (the manifest's preprocessing, done once per bundle
and fed to all of its artifacts), and :func:`retrieval_metrics` gives Recall@K for the data's Ks, MAP@R
and R-Precision. Metrics are fractions; changes and drop limits are *points* (100 x a difference of
fractions), as in export validation.

Rules, per artifact precision and metric:

- a drop larger than its ``--max-drop`` limit fails, as does a value under its ``--min`` floor;
- an improvement passes and is reported as such;
- the baseline must cover every artifact checked; with ``--artifact all`` an artifact the reference has
  but the bundle lacks fails (it was lost), one that cannot run on this machine is skipped with a note.

A baseline records the data fingerprint (file list and labels); comparing against one made on other
data is refused unless allowed, since its numbers would not mean the same thing. A different bundle is
the normal case (a new model) and only noted.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from proxyembed import __version__
from proxyembed.data.spec import DataSplit
from proxyembed.runtime.bundle import Bundle
from proxyembed.runtime.encoder import Encoder
from proxyembed.runtime.errors import BadInput, IntegrityError, ProxyEmbedError
from proxyembed.runtime.manifest import PRECISIONS
from proxyembed.runtime.metrics import retrieval_metrics

BASELINE_FORMAT = 1
BASELINE_KIND = "proxyembed-check-baseline"
GATE_METRIC = "recall@1"
DEFAULT_MAX_DROP = {GATE_METRIC: 1.0}
DEFAULT_OTHER_DROP = 2.0  # Recall@K>1, MAP@R, R-Precision: catch large moves, gate on Recall@1
_EPS_POINTS = 1e-6  # differences of fractions are not exact: 0.80 - 0.79 is 1.0000000000000009 points

ArtifactChoice = Literal["auto", "fp32", "fp16", "int8", "all"]
ARTIFACT_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS, "all")
RowStatus = Literal["pass", "improved", "fail", "accepted", "new"]
Progress = Callable[[int], None]


# -- tolerances --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    """Allowed drop in points per metric (``all`` sets the default for unnamed ones) and absolute floors."""

    max_drop: dict[str, float] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)

    def limit(self, metric: str) -> float:
        """The allowed drop in points for ``metric``."""
        if metric in self.max_drop:
            return self.max_drop[metric]
        return self.max_drop.get("all", DEFAULT_MAX_DROP.get(metric, DEFAULT_OTHER_DROP))

    def validate(self, metrics: Sequence[str]) -> None:
        """Refuse a metric name the data does not produce (a typo would silently never gate)."""
        for option, named in (("--max-drop", set(self.max_drop) - {"all"}), ("--min", set(self.floors))):
            unknown = sorted(named - set(metrics))
            if unknown:
                raise BadInput(f"{option}: unknown metric(s) {unknown} for this data", hint=f"valid: {', '.join(metrics)} (or all=, for --max-drop)")


def _pairs(values: Sequence[str], option: str, example: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        name, _, num = item.partition("=")
        try:
            value = float(num)
            if not name.strip() or math.isnan(value):
                raise ValueError(item)
            out[name.strip().lower()] = value
        except ValueError:
            raise BadInput(f"{option} '{item}' is not METRIC=NUMBER", hint=f"e.g. {option} {example}") from None
    return out


def parse_tolerances(max_drop: Sequence[str] = (), floors: Sequence[str] = ()) -> Tolerances:
    """``["recall@1=0.5,map@r=1"]`` drops in points and ``["recall@1=0.80"]`` floors as fractions."""
    drops = _pairs(max_drop, "--max-drop", "recall@1=1.0,map@r=2")
    for name, points in drops.items():
        if points < 0:
            raise BadInput(f"--max-drop {name}={points:g}: a drop limit cannot be negative", hint="0 means no drop at all is allowed")
    mins = _pairs(floors, "--min", "recall@1=0.80")
    for name, value in mins.items():
        if not 0 <= value <= 1:
            raise BadInput(f"--min {name}={value:g} is not a fraction between 0 and 1", hint=f"write {value / 100:g} for {value:g}%")
    return Tolerances(drops, mins)


def metric_names(ks: Sequence[int]) -> list[str]:
    """The metrics a check computes for data with these Ks, in report order."""
    return [f"recall@{k}" for k in sorted(set(ks))] + ["map@r", "r_precision"]


# -- evaluating a bundle -----------------------------------------------------------------------------


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
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ArtifactRun:
        if not isinstance(d, dict) or not isinstance(d.get("metrics"), dict):
            raise BadInput(f"{where}: artifact entry has no 'metrics' object", hint="re-create the baseline with --write-baseline")
        metrics = d["metrics"]
        bad = [k for k, v in metrics.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1]
        if bad:
            raise BadInput(f"{where}: metric(s) {bad} are not fractions between 0 and 1", hint="re-create the baseline with --write-baseline")
        try:
            return cls(
                precision=str(d["precision"]),
                file=str(d.get("file", "")),
                sha256=str(d.get("sha256", "")),
                provider=str(d.get("provider", "")),
                threads=d.get("threads"),
                batch_size=int(d.get("batch_size", 0)),
                metrics={str(k): float(v) for k, v in metrics.items()},
                validated=bool(d.get("validated", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"{where}: malformed artifact entry ({exc})", hint="re-create the baseline with --write-baseline") from None


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


def data_fingerprint(split: DataSplit, spec: str) -> dict[str, Any]:
    """The data's fingerprint (file list and labels), plus the spec as given and the query count, for the report."""
    return {**split.fingerprint(), "spec": spec, "queries": len(split.eval)}


def resolution_notes(candidate: Evaluation, tol: Tolerances) -> list[str]:
    """Warn when one query moves Recall@K by more than its limit: any single flip would then fail."""
    queries = int(candidate.data.get("queries") or 0)
    step = 100 / queries if queries else 0.0
    tight = [m for m in metric_names(candidate.ks) if m.startswith("recall@") and tol.limit(m) + _EPS_POINTS < step]
    if not tight:
        return []
    return [
        f"one query moves Recall@K by {step:.2f} points here ({queries} queries), more than the limit for {', '.join(tight)}: "
        "a single changed neighbour fails the check; evaluate on more images or raise --max-drop"
    ]


def environment() -> dict[str, Any]:
    """What can make numbers move between machines: CPU, core count, onnxruntime version."""
    import onnxruntime

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "proxyembed": __version__,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def _embed(encoders: Sequence[Encoder], sources: Sequence[Any], batch_size: int, progress: Progress | None) -> list[np.ndarray]:
    """Embed ``sources`` with every encoder, decoding and preprocessing each batch once (same manifest)."""
    outs: list[list[np.ndarray]] = [[] for _ in encoders]
    for batch in encoders[0].preprocessor.batches(sources, batch_size):
        for enc, out in zip(encoders, outs, strict=True):
            out.append(enc.encode_batch(batch))
        if progress is not None:
            progress(len(batch) * len(encoders))
    return [np.concatenate(o) if o else np.zeros((0, e.dim), np.float32) for e, o in zip(encoders, outs, strict=True)]


@dataclass(frozen=True)
class CheckOptions:
    """How to evaluate: artifact choice, device, threads, batch size (the same for both sides)."""

    artifact: str = "auto"
    device: str = "auto"
    threads: int | None = None
    batch_size: int = 32


def evaluate(
    bundle_path: str | Path,
    split: DataSplit,
    spec: str,
    opts: CheckOptions = CheckOptions(),
    *,
    only: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Embed ``split``'s evaluation data with the chosen artifacts of a bundle and compute its metrics.

    ``opts.artifact`` is ``auto`` (what the runtime would pick), a precision, or ``all``; ``only`` names
    the precisions exactly instead (to run a reference bundle on the candidate's choice).
    """
    if opts.batch_size <= 0:
        raise BadInput(f"--batch-size must be positive, got {opts.batch_size}")
    bundle = Bundle.load(bundle_path)
    encoders, skipped, notes = _encoders(bundle, opts.artifact, opts.device, opts.threads, only)
    if not encoders:
        raise BadInput(f"no artifact of bundle {bundle.path} can run on this machine: {skipped}", hint="run the check where they can run")
    labels = np.array([s.label for s in split.eval])
    queries = _embed(encoders, [s.source for s in split.eval], opts.batch_size, progress)
    gallery = _embed(encoders, [s.source for s in split.gallery], opts.batch_size, progress) if split.gallery else None
    g_labels = np.array([s.label for s in split.gallery]) if split.gallery else None
    runs: dict[str, ArtifactRun] = {}
    for i, enc in enumerate(encoders):
        metrics = retrieval_metrics(queries[i], labels, ks=split.ks, gallery=None if gallery is None else gallery[i], gallery_labels=g_labels)
        runs[enc.precision] = ArtifactRun(
            precision=enc.precision,
            file=enc.artifact.file,
            sha256=enc.artifact.sha256,
            provider=enc.provider,
            threads=opts.threads,
            batch_size=opts.batch_size,
            metrics=metrics,
            validated=enc.artifact.passed,
        )
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


# -- baseline file -----------------------------------------------------------------------------------


def baseline_dict(ev: Evaluation) -> dict[str, Any]:
    """The JSON layout of a baseline file (format_version 1)."""
    return {
        "format_version": BASELINE_FORMAT,
        "kind": BASELINE_KIND,
        "proxyembed_version": ev.proxyembed_version,
        "created": ev.created,
        "bundle": ev.bundle,
        "data": ev.data,
        "ks": ev.ks,
        "artifacts": {p: run.to_dict() for p, run in ev.artifacts.items()},
        "environment": ev.environment,
    }


def read_baseline(path: str | Path) -> Evaluation:
    """Parse and validate a baseline file; every problem is a :class:`BadInput` naming the file."""
    path = Path(path)
    redo = "re-create it with --write-baseline"
    if not path.is_file():
        raise BadInput(
            f"baseline file not found: {path}",
            hint="create it once with --write-baseline (and commit it), then run the check without that option",
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"cannot read baseline {path}: {exc}", hint=redo) from None
    if not isinstance(d, dict) or d.get("kind") != BASELINE_KIND:
        raise BadInput(f"{path} is not a proxyembed check baseline", hint=f"point --baseline at a file written by --write-baseline, or {redo}")
    if d.get("format_version") != BASELINE_FORMAT:
        raise BadInput(
            f"{path}: baseline format_version {d.get('format_version')!r} is not supported (this proxyembed reads {BASELINE_FORMAT})",
            hint=f"upgrade proxyembed, or {redo}",
        )
    for key, typ in (("bundle", dict), ("data", dict), ("ks", list), ("artifacts", dict)):
        if not isinstance(d.get(key), typ):
            raise BadInput(f"{path}: field '{key}' is missing or not a {typ.__name__}", hint=redo)
    if not isinstance(d["data"].get("sha256"), str):
        raise BadInput(f"{path}: field 'data.sha256' (the data fingerprint) is missing", hint=redo)
    if not all(isinstance(k, int) and k > 0 for k in d["ks"]):
        raise BadInput(f"{path}: field 'ks' must list positive integers, got {d['ks']}", hint=redo)
    arts = {str(p): ArtifactRun.from_dict(a, f"{path}: artifacts.{p}") for p, a in d["artifacts"].items()}
    return Evaluation(
        bundle=d["bundle"],
        data=d["data"],
        ks=[int(k) for k in d["ks"]],
        artifacts=arts,
        environment=d.get("environment") or {},
        created=str(d.get("created", "")),
        proxyembed_version=str(d.get("proxyembed_version", "")),
    )


def merged_baseline(new: Evaluation, previous: Evaluation | None) -> tuple[Evaluation, list[str]]:
    """``new``, keeping the previous baseline's other artifacts when they belong to the same bundle and data.

    Entries of another bundle or data would be stale next to the new numbers, so they are dropped (and said).
    """
    if previous is None:
        return new, []
    others = {p: r for p, r in previous.artifacts.items() if p not in new.artifacts}
    if not others:
        return new, []
    same = previous.bundle.get("manifest_sha256") == new.bundle.get("manifest_sha256") and same_data(previous, new)
    if not same:
        return new, [f"dropped the old baseline's {', '.join(sorted(others))} entries: they were made with another bundle or data"]
    merged = replace(new, artifacts={**others, **new.artifacts})
    return merged, [f"kept the baseline's {', '.join(sorted(others))} entries (same bundle and data, not re-checked)"]


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temp file in the same folder and ``os.replace`` it: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- comparing ---------------------------------------------------------------------------------------


def same_data(a: Evaluation, b: Evaluation) -> bool:
    """Whether two evaluations used the same evaluation files and labels (paths may differ by machine)."""
    return a.data.get("sha256") == b.data.get("sha256") and sorted(a.ks) == sorted(b.ks)


def require_same_data(reference: Evaluation, candidate: Evaluation, where: str, allow_change: bool) -> list[str]:
    """Refuse a reference made on other data unless ``allow_change``; returns the notes to report."""
    if same_data(reference, candidate):
        return []
    ref, now = reference.data, candidate.data
    what = (
        f"{where} was made on other evaluation data: {ref.get('images', '?')} images / {ref.get('classes', '?')} classes, "
        f"fingerprint {str(ref.get('sha256'))[:12]}, Ks {reference.ks}; --data {now.get('spec')} has "
        f"{now.get('images')} images / {now.get('classes')} classes, fingerprint {str(now.get('sha256'))[:12]}, Ks {candidate.ks}"
    )
    if not allow_change:
        raise BadInput(what, hint="use the baseline's data, pass --allow-data-change to compare anyway, or --write-baseline to start a new baseline")
    return [f"{what}; compared anyway (--allow-data-change)"]


@dataclass(frozen=True)
class MetricRow:
    """One metric of one artifact: reference and current value (fractions), limit (points), verdict."""

    metric: str
    reference: float | None
    now: float
    limit: float
    floor: float | None
    status: RowStatus

    @property
    def change(self) -> float | None:
        """Current minus reference, in points."""
        return None if self.reference is None else 100 * (self.now - self.reference)

    @property
    def below_floor(self) -> bool:
        return self.floor is not None and self.now < self.floor

    @property
    def over_limit(self) -> bool:
        return self.change is not None and -self.change > self.limit + _EPS_POINTS

    def problem(self, precision: str) -> str:
        """Why this row fails, in one phrase (empty when it does not)."""
        if self.below_floor:
            return f"{precision} {self.metric} is {100 * self.now:.2f}%, under the floor of {100 * self.floor:.2f}%"  # type: ignore[operator]
        if self.over_limit:
            return f"{precision} {self.metric} dropped {-self.change:.2f} points (limit {self.limit:.2f})"  # type: ignore[operator]
        return ""


@dataclass
class ArtifactResult:
    """The comparison for one precision: its rows, or why it has none (missing in the bundle, skipped)."""

    precision: str
    state: Literal["compared", "new", "missing", "skipped"]
    rows: list[MetricRow] = field(default_factory=list)
    candidate: ArtifactRun | None = None
    reference: ArtifactRun | None = None
    reason: str = ""

    def failures(self) -> list[str]:
        if self.state == "missing":
            return [f"{self.precision} is in the reference but not in the bundle"]
        return [p for r in self.rows if r.status == "fail" and (p := r.problem(self.precision))]


@dataclass
class CheckReport:
    """Everything a check found: the two evaluations, per-artifact results and notes, and the verdict."""

    mode: Literal["baseline", "against", "write"]
    candidate: Evaluation
    reference: Evaluation | None
    results: list[ArtifactResult]
    tolerances: Tolerances
    notes: list[str] = field(default_factory=list)
    baseline_path: str | None = None

    @property
    def failures(self) -> list[str]:
        return [f for r in self.results for f in r.failures()]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def improvements(self) -> list[str]:
        return [
            f"{r.precision} {row.metric} +{row.change:.2f}"
            for r in self.results
            for row in r.rows
            if row.status == "improved" and row.change is not None
        ]

    def verdict(self) -> str:
        """The last line of output: ``check passed ...``, or ``check FAILED: <first failure> ...``."""
        failures = self.failures
        if failures:
            more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
            written = "; baseline not written" if self.mode == "write" else ""
            return f"check FAILED: {failures[0]}{more}{written}"
        if self.mode == "write":
            return f"check passed: baseline written to {self.baseline_path} ({', '.join(sorted(self.candidate.artifacts))})"
        improved = self.improvements
        checked = ", ".join(r.precision for r in self.results if r.rows)
        extra = f"; improved: {', '.join(improved[:3])} points" + (" ..." if len(improved) > 3 else "") if improved else ""
        return f"check passed ({checked}){extra}"

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` report."""
        return {
            "status": "passed" if self.passed else "failed",
            "exit_code": 0 if self.passed else 1,
            "verdict": self.verdict(),
            "mode": self.mode,
            "failures": self.failures,
            "notes": self.notes,
            "tolerances": {"max_drop_points": {m: self.tolerances.limit(m) for m in metric_names(self.candidate.ks)}, "min": self.tolerances.floors},
            "candidate": baseline_dict(self.candidate),
            "reference": None if self.reference is None else baseline_dict(self.reference),
            "baseline": self.baseline_path,
            "artifacts": [
                {
                    "precision": r.precision,
                    "state": r.state,
                    "reason": r.reason,
                    "metrics": [
                        {
                            "metric": row.metric,
                            "reference": row.reference,
                            "now": row.now,
                            "change_points": row.change,
                            "max_drop_points": row.limit,
                            "min": row.floor,
                            "status": row.status,
                        }
                        for row in r.rows
                    ],
                }
                for r in self.results
            ],
        }


def _status(row: MetricRow, accept_drops: bool) -> RowStatus:
    if row.below_floor or (row.over_limit and not accept_drops):
        return "fail"
    if row.over_limit:
        return "accepted"
    if row.change is None:
        return "new"
    return "improved" if row.change > _EPS_POINTS else "pass"


def _rows(now: dict[str, float], ref: dict[str, float] | None, ks: Sequence[int], tol: Tolerances, accept_drops: bool) -> list[MetricRow]:
    rows = []
    for metric in (m for m in metric_names(ks) if m in now):
        row = MetricRow(metric, None if ref is None else ref.get(metric), now[metric], tol.limit(metric), tol.floors.get(metric), "pass")
        rows.append(replace(row, status=_status(row, accept_drops)))
    return rows


def compare(
    candidate: Evaluation,
    reference: Evaluation | None,
    tol: Tolerances,
    *,
    all_artifacts: bool,
    writing: bool = False,
) -> list[ArtifactResult]:
    """Per-precision results of ``candidate`` against ``reference`` (None: no reference, floors only).

    A checked precision the reference lacks is an error unless ``all_artifacts`` or ``writing`` (then it
    is "new"); with ``all_artifacts`` a reference precision the bundle lacks is "missing" (a failure) and
    one that could not run here is "skipped". ``writing`` a baseline reports drops without failing.
    """
    ref_arts = {} if reference is None else reference.artifacts
    results = []
    for precision, run in candidate.artifacts.items():
        ref = ref_arts.get(precision)
        if reference is not None and ref is None and not (all_artifacts or writing):
            raise BadInput(
                f"the reference has no {precision} numbers (it has {', '.join(sorted(ref_arts)) or 'none'})",
                hint=f"pass --artifact with one of those, or record {precision} with --write-baseline",
            )
        rows = _rows(run.metrics, None if ref is None else ref.metrics, candidate.ks, tol, writing)
        results.append(ArtifactResult(precision, "new" if ref is None else "compared", rows, run, ref))
    if all_artifacts and not writing:
        for precision, ref in ref_arts.items():
            if precision in candidate.skipped:
                results.append(ArtifactResult(precision, "skipped", reference=ref, reason=candidate.skipped[precision]))
            elif precision not in candidate.artifacts:
                results.append(ArtifactResult(precision, "missing", reference=ref, reason="not in the bundle"))
    return sorted(results, key=lambda r: PRECISIONS.index(r.precision) if r.precision in PRECISIONS else len(PRECISIONS))


def provenance_notes(candidate: Evaluation, reference: Evaluation, what: str) -> list[str]:
    """Say when the model or the execution setup differs from the reference's (numbers may then move)."""
    notes = []
    old, new = reference.bundle.get("manifest_sha256", ""), candidate.bundle.get("manifest_sha256", "")
    if old == new:
        notes.append(f"same bundle as the {what} (manifest sha256 {new[:12]})")
    else:
        notes.append(f"bundle differs from the {what}'s: manifest sha256 {str(old)[:12]} -> {new[:12]} (a new model)")
    for precision, run in candidate.artifacts.items():
        ref = reference.artifacts.get(precision)
        if ref is None:
            continue
        pairs = (("provider", ref.provider, run.provider), ("threads", ref.threads, run.threads), ("batch size", ref.batch_size, run.batch_size))
        setup = [f"{name} {a} -> {b}" for name, a, b in pairs if a != b]
        if setup:
            notes.append(f"{precision}: {', '.join(setup)} since the {what}: small differences are expected (docs/check.md)")
    old_env, new_env = reference.environment, candidate.environment
    env_diff = [f"{k} {old_env.get(k)!r} -> {new_env.get(k)!r}" for k in ("cpu", "onnxruntime") if old_env.get(k) != new_env.get(k)]
    if old_env and env_diff:
        notes.append(f"machine differs from the {what}'s ({'; '.join(env_diff)}): small differences are expected (docs/check.md)")
    return notes


# -- the check, end to end ---------------------------------------------------------------------------


def check_against_baseline(
    bundle: str | Path,
    split: DataSplit,
    spec: str,
    baseline: str | Path,
    tol: Tolerances,
    opts: CheckOptions = CheckOptions(),
    *,
    write: bool = False,
    allow_data_change: bool = False,
    progress: Progress | None = None,
) -> CheckReport:
    """Check ``bundle`` against the baseline file, or (``write``) record its numbers there.

    Writing keeps the absolute floors: a baseline under a floor is never written (the report fails).
    Drops against an existing baseline are shown as accepted, since writing is how a team accepts them.
    """
    baseline = Path(baseline)
    previous = read_baseline(baseline) if (not write or baseline.exists()) else None
    tol.validate(metric_names(split.ks))
    candidate = evaluate(bundle, split, spec, opts, progress=progress)
    notes = [*split.warnings, *candidate.notes, *resolution_notes(candidate, tol)]
    reference = previous
    if previous is not None:
        if write and not same_data(previous, candidate):
            notes.append(f"the previous baseline in {baseline} was made on other data: replaced, not compared")
            reference = None
        else:
            notes += require_same_data(previous, candidate, f"baseline {baseline}", allow_data_change)
            notes += provenance_notes(candidate, previous, "baseline")
    results = compare(candidate, reference, tol, all_artifacts=opts.artifact == "all", writing=write)
    report = CheckReport("write" if write else "baseline", candidate, reference, results, tol, notes, str(baseline))
    if write and report.passed:
        merged, merge_notes = merged_baseline(candidate, previous if reference is not None else None)
        write_json_atomic(baseline, baseline_dict(merged))
        report.notes += merge_notes
    return report


def check_against_bundle(
    bundle: str | Path,
    against: str | Path,
    split: DataSplit,
    spec: str,
    tol: Tolerances,
    opts: CheckOptions = CheckOptions(),
    *,
    progress: Progress | None = None,
) -> CheckReport:
    """Compare two bundles on the same data: the reference runs the candidate's chosen precisions.

    With ``--artifact all`` the reference runs all of its own, so an artifact the new bundle lost fails.
    """
    tol.validate(metric_names(split.ks))
    Bundle.load(against, verify=False)  # a missing reference fails before the candidate's embedding work
    candidate = evaluate(bundle, split, spec, opts, progress=progress)
    only = None if opts.artifact == "all" else list(candidate.artifacts)
    reference = evaluate(against, split, spec, opts, only=only, progress=progress)
    notes = [*split.warnings, *candidate.notes, *reference.notes, *resolution_notes(candidate, tol)]
    notes += provenance_notes(candidate, reference, "reference bundle")
    results = compare(candidate, reference, tol, all_artifacts=opts.artifact == "all")
    return CheckReport("against", candidate, reference, results, tol, notes)
