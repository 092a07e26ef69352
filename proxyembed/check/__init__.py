"""``proxyembed check``: gate a bundle on retrieval accuracy against a stored baseline or another bundle.

Torch-free by design (docs/architecture.md): a CI runner needs only the runtime. Each chosen artifact embeds the
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

Modules, in the order a check uses them: :mod:`.tolerances` (limits and floors), :mod:`.measure`
(embedding and metrics: :func:`evaluate_bundle`), :mod:`.baseline` (the baseline file), :mod:`.comparison`
(per-metric verdicts), :mod:`.notes` and :mod:`.report` (what was found), :mod:`.render` (how it is said:
console, Markdown, tracker rows), :mod:`.gate` (the two entry points), :mod:`.api` (:func:`check_bundle`,
one call from user-level settings, the CLI's and ``proxyembed.check(...)``'s).
"""

from __future__ import annotations

from proxyembed._callable_module import make_callable
from proxyembed.runtime.files import write_json_atomic

from .api import check_bundle
from .baseline import (
    BASELINE_FORMAT,
    BASELINE_KIND,
    baseline_dict,
    merged_baseline,
    read_baseline,
    require_same_data,
    same_bundle,
    same_data,
)
from .comparison import ArtifactResult, MetricRow, RowStatus, compare
from .gate import check_against_baseline, check_against_bundle
from .measure import ARTIFACT_CHOICES, ArtifactRun, CheckOptions, Evaluation, data_fingerprint, environment, evaluate_bundle
from .notes import provenance_notes, resolution_notes
from .render import markdown_summary, print_report, tracker_rows
from .report import CheckReport
from .tolerances import DEFAULT_OTHER_DROP, METRIC_MAX_DROP, Tolerances, metric_names, parse_tolerances, tolerances

__all__ = [
    "ARTIFACT_CHOICES",
    "BASELINE_FORMAT",
    "BASELINE_KIND",
    "DEFAULT_OTHER_DROP",
    "METRIC_MAX_DROP",
    "ArtifactResult",
    "ArtifactRun",
    "CheckOptions",
    "CheckReport",
    "Evaluation",
    "MetricRow",
    "RowStatus",
    "Tolerances",
    "baseline_dict",
    "check_against_baseline",
    "check_against_bundle",
    "check_bundle",
    "compare",
    "data_fingerprint",
    "environment",
    "evaluate_bundle",
    "markdown_summary",
    "merged_baseline",
    "metric_names",
    "parse_tolerances",
    "print_report",
    "provenance_notes",
    "read_baseline",
    "require_same_data",
    "resolution_notes",
    "same_bundle",
    "same_data",
    "tolerances",
    "tracker_rows",
    "write_json_atomic",
]

# proxyembed.check(bundle, data, baseline, ...) -> CheckReport, the Python API's form of the command
make_callable(__name__, "proxyembed.check.api", "check_bundle")
