"""How far a metric may drop (points) and how low it may go (a fraction), from ``--max-drop`` and ``--min``.

The limits are keyed by metric (export keys its own by artifact precision: ``proxyembed.export.options.PRECISION_MAX_DROP``).
Command lines are parsed by the runtime's one ``KEY=VALUE`` parser; mappings from the Python API come
straight to :func:`tolerances`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.metrics import GATE_METRIC
from proxyembed.runtime.options import parse_key_values

METRIC_MAX_DROP = {GATE_METRIC: 1.0}
DEFAULT_OTHER_DROP = 2.0  # Recall@K>1, MAP@R, R-Precision: catch large moves, gate on Recall@1
EPS_POINTS = 1e-6  # differences of fractions are not exact: 0.80 - 0.79 is 1.0000000000000009 points


def metric_names(ks: Sequence[int]) -> list[str]:
    """The metrics a check computes for data with these Ks, in report order."""
    return [f"recall@{k}" for k in sorted(set(ks))] + ["map@r", "r_precision"]


@dataclass(frozen=True)
class Tolerances:
    """Allowed drop in points per metric (``all`` sets the default for unnamed ones) and absolute floors."""

    max_drop: dict[str, float] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)

    def limit(self, metric: str) -> float:
        """The allowed drop in points for ``metric``."""
        if metric in self.max_drop:
            return self.max_drop[metric]
        return self.max_drop.get("all", METRIC_MAX_DROP.get(metric, DEFAULT_OTHER_DROP))

    def validate(self, metrics: Sequence[str]) -> None:
        """Refuse a metric name the data does not produce (a typo would silently never gate)."""
        for option, named in (("--max-drop", set(self.max_drop) - {"all"}), ("--min", set(self.floors))):
            unknown = sorted(named - set(metrics))
            if unknown:
                raise BadInput(f"{option}: unknown metric(s) {unknown} for this data", hint=f"valid: {', '.join(metrics)} (or all=, for --max-drop)")


Limits = Mapping[str, float] | Sequence[str]
"""Limits as the Python API gives them (``{"recall@1": 0.5}``) or as the command line does (``["recall@1=0.5,map@r=2"]``)."""
_EXAMPLES = {"--max-drop": "recall@1=1.0,map@r=2", "--min": "recall@1=0.80"}


def limits(values: Limits, option: Literal["--max-drop", "--min"]) -> Mapping[str, float]:
    """A mapping as given, or ``METRIC=NUMBER`` strings (comma-separated and/or repeated) parsed."""
    if isinstance(values, Mapping):
        return values
    return parse_key_values(values, option, example=_EXAMPLES[option], form="METRIC=NUMBER")


def parse_tolerances(max_drop: Limits = (), floors: Limits = ()) -> Tolerances:
    """Drops in points (``--max-drop``) and floors as fractions (``--min``), each a mapping or ``METRIC=NUMBER`` strings."""
    return tolerances(limits(max_drop, "--max-drop"), limits(floors, "--min"))


def tolerances(max_drop: Mapping[str, float] | None = None, floors: Mapping[str, float] | None = None) -> Tolerances:
    """Limits by metric name (any case): drops in points, never negative; floors as fractions between 0 and 1."""
    drops = {name.lower(): float(points) for name, points in (max_drop or {}).items()}
    for name, points in drops.items():
        if not points >= 0:
            raise BadInput(f"--max-drop {name}={points:g}: a drop limit cannot be negative", hint="0 means no drop at all is allowed")
    mins = {name.lower(): float(value) for name, value in (floors or {}).items()}
    for name, value in mins.items():
        if not 0 <= value <= 1:
            raise BadInput(f"--min {name}={value:g} is not a fraction between 0 and 1", hint=f"write {value / 100:g} for {value:g}%")
    return Tolerances(drops, mins)
