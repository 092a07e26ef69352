"""What a check says: the console report, the Markdown ``--summary`` and the rows ``--log`` sends to the trackers.

The output contract for CI logs (``proxyembed check``): the report (what was compared, a table per
artifact and metric, notes), then one verdict line that the command prints last. Torch-free, like the
rest of :mod:`proxyembed.check`.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from .comparison import MetricRow
from .report import CheckReport

_STATUS_STYLE = {"pass": "green", "improved": "bold green", "fail": "bold red", "accepted": "yellow", "new": "cyan"}
_STATUS_TEXT = {"pass": "PASS", "improved": "IMPROVED", "fail": "FAIL", "accepted": "accepted", "new": "new"}


def tracker_rows(report: CheckReport) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The check's table as plain rows (fractions, changes in points) and each artifact's measured values, for ``--log``."""
    rows = [{"artifact": r.precision, "metric": row.metric, "reference": row.reference, "now": row.now, "change": row.change, "status": row.status}
            for r in report.results for row in r.rows]
    numbers = {f"{row['artifact']}/{row['metric']}": row["now"] for row in rows if row["now"] is not None}
    return rows, numbers


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _change(row: MetricRow) -> str:
    return "—" if row.change is None else f"{row.change:+.2f}"


def _limit(row: MetricRow) -> str:
    parts = [f"{row.limit:.2f}"] if row.reference is not None else []
    if row.floor is not None:
        parts.append(f"≥{100 * row.floor:.2f}")
    return " ".join(parts) or "—"


def _cells(precision: str, row: MetricRow) -> list[str]:
    """One metric row as table cells: artifact, metric, reference, now, change, limit, status."""
    return [precision, row.metric, _pct(row.reference), _pct(row.now), _change(row), _limit(row), _STATUS_TEXT[row.status]]


def _describe_bundle(bundle: dict[str, Any]) -> str:
    return f"{bundle['path']} (manifest sha256 {bundle['manifest_sha256'][:12]}, dim {bundle['dim']})"


def _reference_name(report: CheckReport) -> str:
    return "old" if report.mode == "against" else "baseline"


def print_report(report: CheckReport, out: Console) -> None:
    """The report on ``out``: the bundle(s), the data, one table row per artifact and metric, how each ran, the notes."""
    cand, ref = report.candidate, report.reference
    data = cand.data
    _say(out, f"bundle   {_describe_bundle(cand.bundle)}")
    if report.mode == "against" and ref is not None:
        _say(out, f"against  {_describe_bundle(ref.bundle)}")
    else:
        _say(out, f"baseline {report.baseline_path}" + (f" (created {ref.created})" if ref is not None else " (none yet)"))
    _say(out, f"data     {data['spec']}: {data['images']} images / {data['classes']} classes, fingerprint {data['sha256'][:12]}")
    table = Table(title="metrics in %; change and limit (max drop) in points; ≥ floor", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("artifact", "left"), ("metric", "left"), (_reference_name(report), "right"), ("now", "right"),
                          ("change", "right"), ("limit", "right"), ("status", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for result in report.results:
        if not result.rows:
            why = "FAIL: " + result.reason if result.state == "missing" else f"skipped: {result.reason}"
            table.add_row(result.precision, "—", "", "", "", "", why, style="bold red" if result.state == "missing" else "yellow")
        for i, row in enumerate(result.rows):
            table.add_row(*_cells(result.precision if i == 0 else "", row), style=_STATUS_STYLE[row.status] if row.status != "pass" else None)
        table.add_section()
    out.print(table)
    for precision, run in cand.artifacts.items():
        _say(out, f"{precision}: {run.file} on {run.provider}" + ("" if run.validated else " (NOT validated at export)"))
    for note in report.notes:
        _say(out, f"note: {note}")


def _say(out: Console, text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def markdown_summary(report: CheckReport) -> str:
    """The ``--summary`` Markdown: verdict, what was compared, one table row per metric, notes."""
    cand, ref = report.candidate, report.reference
    icon, word = ("✅", "passed") if report.passed else ("❌", "FAILED")
    against = (
        f"old bundle `{ref.bundle['path']}`" if report.mode == "against" and ref is not None else f"baseline `{report.baseline_path}`"
    )
    lines = [
        f"### {icon} proxyembed check {word}",
        "",
        f"`{_md(report.verdict())}`",
        "",
        f"Bundle `{cand.bundle['path']}` (manifest `{cand.bundle['manifest_sha256'][:12]}`) vs {against}; "
        f"data `{cand.data['spec']}`: {cand.data['images']} images / {cand.data['classes']} classes.",
        "",
        f"| artifact | metric | {_reference_name(report)} % | now % | change (points) | limit | status |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for result in report.results:
        if not result.rows:
            lines.append(f"| {result.precision} | — | | | | | {'**FAIL**' if result.state == 'missing' else 'skipped'}: {_md(result.reason)} |")
        for row in result.rows:
            *cells, status = _cells(result.precision, row)
            lines.append("| " + " | ".join([*cells, f"**{status}**" if row.status == "fail" else status]) + " |")
    if report.notes:
        lines += ["", "<details><summary>notes</summary>", "", *[f"- {_md(n)}" for n in report.notes], "", "</details>"]
    return "\n".join(lines) + "\n\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")
