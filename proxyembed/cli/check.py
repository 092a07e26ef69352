"""``proxyembed check``: the CI gate on retrieval accuracy (logic in :mod:`proxyembed.check`, words in :mod:`proxyembed.check.render`).

Output contract for CI logs: a table per run, notes, then exactly one last line that says how it ended
— ``check passed ...`` (exit 0), ``check FAILED: ...`` (exit 1) or ``check error: ...`` (exit 2). The
same verdict goes to ``--json`` and to the Markdown ``--summary`` (appended, as GITHUB_STEP_SUMMARY
expects), so a failed run is explained wherever it is read. Torch is never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from proxyembed.check.measure import ArtifactChoice
from proxyembed.runtime.encoder import DeviceChoice

from ._common import console, err_console, print_json, user_errors
from ._tracking import reopened_tracking

if TYPE_CHECKING:
    from proxyembed.runtime.errors import ProxyEmbedError


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    app.command("check", rich_help_panel="CI")(check_command)


@user_errors
def check_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder to check (the new model).", show_default=False)],
    data: Annotated[str, typer.Option(help="Evaluation data: synthetic[:opts], a class-folder, or a CUB/Cars/SOP/In-Shop root.")],
    baseline: Annotated[Path | None, typer.Option(help="Baseline JSON to compare with (or to write, with --write-baseline).")] = None,
    against: Annotated[Path | None, typer.Option(help="Compare with this older bundle instead of a baseline file.")] = None,
    artifact: Annotated[ArtifactChoice, typer.Option(help="fp32, fp16, int8, all, or auto: what the runtime would pick here.")] = "auto",
    max_drop: Annotated[
        list[str] | None,
        typer.Option(help="Allowed drop in points per metric, e.g. recall@1=1.0,map@r=2 (all=X for every metric). Default recall@1=1, others 2."),
    ] = None,
    min_value: Annotated[list[str] | None, typer.Option("--min", help="Absolute floors as fractions, e.g. recall@1=0.80.")] = None,
    write_baseline: Annotated[bool, typer.Option(help="Record this run's numbers in --baseline (atomic); drops accepted, floors kept.")] = False,
    allow_data_change: Annotated[bool, typer.Option(help="Compare even though the baseline was made on other data.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout (the table goes to stderr).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Write the full report as JSON to this file.")] = None,
    summary: Annotated[Path | None, typer.Option(help='Append a Markdown summary here, e.g. "$GITHUB_STEP_SUMMARY".')] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads; fix it in CI (default: all cores).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference batch.")] = 32,
    device: Annotated[DeviceChoice, typer.Option(help="auto, cpu or cuda.")] = "auto",
    log: Annotated[
        Path | None, typer.Option("--log", help="Run dir trained with --log: add this check's table and verdict to its tracker runs.")
    ] = None,
) -> None:
    """Check BUNDLE's retrieval accuracy against a baseline (or --against an older bundle): exit 0 pass, 1 regression, 2 bad input."""
    from proxyembed.check import check_bundle
    from proxyembed.check.render import markdown_summary, print_report, tracker_rows
    from proxyembed.runtime.errors import ProxyEmbedError

    human = err_console if as_json else console
    try:
        with reopened_tracking(log, human) as session, _progress() as advance:
            report = check_bundle(
                bundle, data, baseline, against=against, artifact=artifact, max_drop=max_drop or [], min_value=min_value or [],
                write_baseline=write_baseline, allow_data_change=allow_data_change, threads=threads, batch_size=batch_size, device=device,
                progress=advance,
            )
            session.log_report("check", *tracker_rows(report), report.verdict())
        print_report(report, human)
        if json_out is not None:
            _write_json(json_out, report.to_dict())
        if summary is not None:
            _append(summary, markdown_summary(report))
    except ProxyEmbedError as exc:
        _finish_error(exc, json_out, summary, as_json)
    if as_json:
        print_json(report.to_dict())
    verdict = report.verdict()
    human.print(verdict, style="bold green" if report.passed else "bold red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if report.passed else 1)


@contextmanager
def _progress() -> Iterator[Callable[[int], None]]:
    """A transient progress line on stderr; the callback takes how many embeddings were just computed."""
    from proxyembed.runtime.progress import progress_bar

    with progress_bar("embedding (images x artifacts)", None, console=err_console) as advance:
        yield advance


def _finish_error(exc: ProxyEmbedError, json_out: Path | None, summary: Path | None, as_json: bool) -> NoReturn:
    """Report a user error as the last line (and in --json / --summary), then exit with its code."""
    from proxyembed.runtime.errors import ProxyEmbedError

    line = f"check error: {exc.message}" + (f" — {exc.hint}" if exc.hint else "")
    code = exc.exit_code
    with suppress(ProxyEmbedError):  # the error may be about these very files
        if json_out is not None:
            _write_json(json_out, {"status": "error", "exit_code": code, "verdict": line})
        if summary is not None:
            _append(summary, f"### ❌ proxyembed check: error\n\n```\n{line}\n```\n\n")
    if as_json:
        print_json({"status": "error", "exit_code": code, "verdict": line})
    err_console.print(line, style="bold red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from proxyembed.check import write_json_atomic
    from proxyembed.runtime.errors import BadInput

    try:
        write_json_atomic(path, payload)
    except OSError as exc:
        raise BadInput(f"--json-out: cannot write {path}: {exc.strerror}", hint="give a writable path") from None


def _append(path: Path, text: str) -> None:
    from proxyembed.runtime.errors import BadInput

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise BadInput(f"--summary: cannot append to {path}: {exc.strerror}", hint="give a writable path") from None
