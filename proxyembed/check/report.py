"""What a check found: both evaluations, per-artifact results, notes, and the one-line verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .baseline import baseline_dict
from .comparison import ArtifactResult
from .measure import Evaluation
from .tolerances import Tolerances, metric_names


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
            "artifacts": [r.to_dict() for r in self.results],
        }
