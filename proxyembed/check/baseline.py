"""The baseline file: its JSON layout, reading and validating it, merging a new run into it, writing it atomically.

A baseline records the data fingerprint; :func:`require_same_data` refuses one made on other data.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.schema import Field, validate

from .measure import ArtifactRun, Evaluation

BASELINE_FORMAT = 1
BASELINE_KIND = "proxyembed-check-baseline"


def _fractions(metrics: dict[str, float]) -> str | None:
    bad = [k for k, v in metrics.items() if not 0 <= v <= 1]
    return f"holds metric(s) {bad} that are not fractions between 0 and 1" if bad else None


ARTIFACT_RUN_SCHEMA: dict[str, Any] = {
    "precision": str,
    "metrics": Field(dict, items=float, rule=_fractions),
    "file": Field(str, required=False),
    "sha256": Field(str, required=False),
    "provider": Field(str, required=False),
    "threads": Field(int | None, required=False),
    "batch_size": Field(int, required=False),
    "validated": Field(bool, required=False),
}
"""What one artifact entry of a baseline file holds (read into an :class:`~.measure.ArtifactRun`)."""


def _positive(ks: list[int]) -> str | None:
    return None if all(k > 0 for k in ks) else f"must list positive integers, got {ks}"


BASELINE_SCHEMA: dict[str, Any] = {
    "bundle": dict,
    "data": {"sha256": str},  # the data fingerprint
    "ks": Field(list, items=int, rule=_positive),
    "artifacts": Field(dict, items=ARTIFACT_RUN_SCHEMA),
    "environment": Field(dict | None, required=False),
    "created": Field(str, required=False),
    "proxyembed_version": Field(str, required=False),
}
"""What :func:`read_baseline` accepts once the file's kind and format_version are known (the layout :func:`baseline_dict` writes)."""


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
    validate(d, BASELINE_SCHEMA, where=str(path), hint=redo)
    return Evaluation(
        bundle=d["bundle"],
        data=d["data"],
        ks=[int(k) for k in d["ks"]],
        artifacts={str(p): ArtifactRun.from_dict(a) for p, a in d["artifacts"].items()},
        environment=d.get("environment") or {},
        created=d.get("created", ""),
        proxyembed_version=d.get("proxyembed_version", ""),
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
    if not (same_bundle(previous, new) and same_data(previous, new)):
        return new, [f"dropped the old baseline's {', '.join(sorted(others))} entries: they were made with another bundle or data"]
    merged = replace(new, artifacts={**others, **new.artifacts})
    return merged, [f"kept the baseline's {', '.join(sorted(others))} entries (same bundle and data, not re-checked)"]


def same_bundle(a: Evaluation, b: Evaluation) -> bool:
    """Whether two evaluations ran the same bundle (same manifest)."""
    return a.bundle.get("manifest_sha256", "") == b.bundle.get("manifest_sha256", "")


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
