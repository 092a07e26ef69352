"""Comparing an evaluation with a reference, per artifact precision and metric.

A drop larger than its limit fails, as does a value under its floor; an improvement passes and is
reported as such. Values are fractions, changes and limits are points (100 x a difference of fractions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.manifest import PRECISIONS

from .measure import ArtifactRun, Evaluation
from .tolerances import EPS_POINTS, Tolerances, metric_names

RowStatus = Literal["pass", "improved", "fail", "accepted", "new"]


@dataclass(frozen=True)
class MetricRow:
    """One metric of one artifact: reference and current value (fractions), limit (points), verdict.

    ``accept_drops`` (writing a baseline) turns a drop over the limit into "accepted"; floors still fail.
    """

    metric: str
    reference: float | None
    now: float
    limit: float
    floor: float | None
    accept_drops: bool = False

    @property
    def change(self) -> float | None:
        """Current minus reference, in points."""
        return None if self.reference is None else 100 * (self.now - self.reference)

    @property
    def below_floor(self) -> bool:
        return self.floor is not None and self.now < self.floor

    @property
    def over_limit(self) -> bool:
        return self.change is not None and -self.change > self.limit + EPS_POINTS

    @property
    def status(self) -> RowStatus:
        if self.below_floor or (self.over_limit and not self.accept_drops):
            return "fail"
        if self.over_limit:
            return "accepted"
        if self.change is None:
            return "new"
        return "improved" if self.change > EPS_POINTS else "pass"

    def problem(self, precision: str) -> str:
        """Why this row fails, in one phrase (empty when it does not)."""
        if self.below_floor:
            return f"{precision} {self.metric} is {100 * self.now:.2f}%, under the floor of {100 * self.floor:.2f}%"  # type: ignore[operator]
        if self.over_limit:
            return f"{precision} {self.metric} dropped {-self.change:.2f} points (limit {self.limit:.2f})"  # type: ignore[operator]
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "reference": self.reference,
            "now": self.now,
            "change_points": self.change,
            "max_drop_points": self.limit,
            "min": self.floor,
            "status": self.status,
        }


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

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "state": self.state, "reason": self.reason, "metrics": [row.to_dict() for row in self.rows]}


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
        rows = _rows(run.metrics, None if ref is None else ref.metrics, candidate.ks, tol, accept_drops=writing)
        results.append(ArtifactResult(precision, "new" if ref is None else "compared", rows, run, ref))
    if all_artifacts and not writing:
        for precision, ref in ref_arts.items():
            if precision in candidate.skipped:
                results.append(ArtifactResult(precision, "skipped", reference=ref, reason=candidate.skipped[precision]))
            elif precision not in candidate.artifacts:
                results.append(ArtifactResult(precision, "missing", reference=ref, reason="not in the bundle"))
    return sorted(results, key=lambda r: PRECISIONS.index(r.precision) if r.precision in PRECISIONS else len(PRECISIONS))


def _rows(now: dict[str, float], ref: dict[str, float] | None, ks: Sequence[int], tol: Tolerances, *, accept_drops: bool) -> list[MetricRow]:
    return [
        MetricRow(metric, None if ref is None else ref.get(metric), now[metric], tol.limit(metric), tol.floors.get(metric), accept_drops)
        for metric in metric_names(ks)
        if metric in now
    ]
