"""The check end to end: evaluate the bundle, compare it with a baseline file or another bundle, report.

With ``--artifact all`` an artifact the reference has but the bundle lacks fails (it was lost); one that
cannot run on this machine is skipped with a note.
"""

from __future__ import annotations

from pathlib import Path

from proxyembed.data.types import DataSplit
from proxyembed.runtime.bundle import Bundle
from proxyembed.runtime.files import write_json_atomic
from proxyembed.runtime.progress import ProgressCallback

from .baseline import baseline_dict, merged_baseline, read_baseline, require_same_data, same_data
from .comparison import compare
from .measure import CheckOptions, evaluate_bundle
from .notes import provenance_notes, resolution_notes
from .report import CheckReport
from .tolerances import Tolerances, metric_names


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
    progress: ProgressCallback | None = None,
) -> CheckReport:
    """Check ``bundle`` against the baseline file, or (``write``) record its numbers there.

    Writing keeps the absolute floors: a baseline under a floor is never written (the report fails).
    Drops against an existing baseline are shown as accepted, since writing is how a team accepts them.
    A previous baseline made on other data is replaced when writing, not compared.
    """
    baseline = Path(baseline)
    reference = read_baseline(baseline) if (not write or baseline.exists()) else None
    tol.validate(metric_names(split.ks))
    candidate = evaluate_bundle(bundle, split, spec, opts, progress=progress)
    notes = [*split.warnings, *candidate.notes, *resolution_notes(candidate, tol)]
    if reference is not None:
        if write and not same_data(reference, candidate):
            notes.append(f"the previous baseline in {baseline} was made on other data: replaced, not compared")
            reference = None
        else:
            notes += require_same_data(reference, candidate, f"baseline {baseline}", allow_data_change)
            notes += provenance_notes(candidate, reference, "baseline")
    results = compare(candidate, reference, tol, all_artifacts=opts.artifact == "all", writing=write)
    report = CheckReport("write" if write else "baseline", candidate, reference, results, tol, notes, str(baseline))
    if write and report.passed:
        merged, merge_notes = merged_baseline(candidate, reference)
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
    progress: ProgressCallback | None = None,
) -> CheckReport:
    """Compare two bundles on the same data: the reference runs the candidate's chosen precisions.

    With ``--artifact all`` the reference runs all of its own, so an artifact the new bundle lost fails.
    """
    tol.validate(metric_names(split.ks))
    Bundle.load(against, verify=False)  # a missing reference fails before the candidate's embedding work
    candidate = evaluate_bundle(bundle, split, spec, opts, progress=progress)
    only = None if opts.artifact == "all" else list(candidate.artifacts)
    reference = evaluate_bundle(against, split, spec, opts, only=only, progress=progress)
    notes = [*split.warnings, *candidate.notes, *reference.notes, *resolution_notes(candidate, tol)]
    notes += provenance_notes(candidate, reference, "reference bundle")
    results = compare(candidate, reference, tol, all_artifacts=opts.artifact == "all")
    return CheckReport("against", candidate, reference, results, tol, notes)
