"""One call for a whole check, as the CLI and ``proxyembed.check(...)`` both make it.

Takes the user-level settings (paths, the data spec, tolerances as ``metric=points`` strings or a
mapping), validates them, resolves the data and dispatches to :mod:`.gate`. Returns the
:class:`~proxyembed.check.report.CheckReport` the CLI prints; a regression is ``report.passed == False``
(not an exception), bad input raises :class:`~proxyembed.runtime.errors.BadInput`.
"""

from __future__ import annotations

from pathlib import Path

from proxyembed.runtime.bundle import Bundle
from proxyembed.runtime.encoder import DEVICES, DeviceChoice
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.progress import ProgressCallback

from .gate import check_against_baseline, check_against_bundle
from .measure import ArtifactChoice, CheckOptions
from .report import CheckReport
from .tolerances import Limits, parse_tolerances


def check_bundle(
    bundle: str | Path | Bundle,
    data: str,
    baseline: str | Path | None = None,
    *,
    against: str | Path | Bundle | None = None,
    artifact: ArtifactChoice = "auto",
    max_drop: Limits = (),
    min_value: Limits = (),
    write_baseline: bool = False,
    allow_data_change: bool = False,
    threads: int | None = None,
    batch_size: int = 32,
    device: DeviceChoice = "auto",
    progress: ProgressCallback | None = None,
) -> CheckReport:
    """Check ``bundle`` (a folder or a loaded :class:`Bundle`) on ``data`` against a ``baseline`` file (or an older bundle, ``against``).

    ``max_drop`` allows drops in points per metric (``{"recall@1": 0.5}`` or ``["recall@1=0.5"]``),
    ``min_value`` sets absolute floors as fractions; both as ``--max-drop`` / ``--min`` of the CLI.
    """
    from proxyembed.data.resolve import resolve_eval_data

    if (baseline is None) == (against is None):
        raise BadInput("give either --baseline FILE or --against OLD_BUNDLE", hint="e.g. proxyembed check NEW --data SPEC --baseline baseline.json")
    if against is not None and (write_baseline or allow_data_change):
        raise BadInput("--write-baseline and --allow-data-change need --baseline, not --against")
    if device not in DEVICES:
        raise BadInput(f"--device '{device}' is unknown", hint=f"use one of {', '.join(DEVICES)}")
    bundle, against = (b.path if isinstance(b, Bundle) else b for b in (bundle, against))
    tol = parse_tolerances(max_drop, min_value)
    opts = CheckOptions(artifact=artifact, device=device, threads=threads, batch_size=batch_size)
    split = resolve_eval_data(data)
    if baseline is None:
        return check_against_bundle(bundle, against, split, data, tol, opts, progress=progress)  # type: ignore[arg-type]
    return check_against_baseline(
        bundle, split, data, baseline, tol, opts, write=write_baseline, allow_data_change=allow_data_change, progress=progress
    )
