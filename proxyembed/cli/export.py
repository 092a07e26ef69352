"""``proxyembed export``: a run dir -> a validated bundle of ONNX (and TensorRT) models.

A thin command: options become :class:`~proxyembed.export.options.ExportOptions` (whose defaults the
options show: they are written there only), the pipeline does the work, and this module only prints
(rich steps, a progress bar, the validation table) and turns a refused artifact into exit 1 (bad input
is exit 2 through :func:`user_errors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from proxyembed.export.options import MAX_DROP_EXAMPLE, PRECISION_MAX_DROP, CalibrationMethod, ExportOptions
from proxyembed.runtime.preprocess import Decode

from ._common import console, err_console, print_json, user_errors
from ._tracking import reopened_tracking

_DEFAULTS = ExportOptions(run=Path(), out=Path())
_LIMITS = ", ".join(f"{k} {v:g}" for k, v in PRECISION_MAX_DROP.items())


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    app.command("export", no_args_is_help=True, rich_help_panel="Export")(export_command)


@user_errors
def export_command(
    run: Annotated[Path, typer.Argument(help="Run dir written by `proxyembed train` (or a .pt checkpoint).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write, e.g. bundles/NAME.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="Also export fp16 (for GPUs; validated but slower on CPU).")] = _DEFAULTS.fp16,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also export int8: a uint8-activation CPU model and a symmetric one for TensorRT.")
    ] = _DEFAULTS.int8,
    tensorrt: Annotated[bool, typer.Option("--tensorrt", help="Also build TensorRT engines (needs a GPU and tensorrt).")] = _DEFAULTS.tensorrt,
    data: Annotated[str | None, typer.Option("--data", help="Data for validation and calibration (default: the run's).")] = _DEFAULTS.data,
    calibration_size: Annotated[
        int, typer.Option("--calibration-size", help="Training images to calibrate int8 on.")
    ] = _DEFAULTS.calibration_size,
    calibration_method: Annotated[
        CalibrationMethod, typer.Option("--calibration-method", help="int8 calibration: minmax, percentile or entropy.")
    ] = _DEFAULTS.int8_options.method,
    int8_float_first_conv: Annotated[
        bool, typer.Option("--int8-float-first-conv", help="Keep the first conv in float (accuracy over speed).")
    ] = _DEFAULTS.int8_options.float_first_conv,
    int8_reduce_range: Annotated[
        bool, typer.Option("--int8-reduce-range", help="7-bit weights for the CPU int8 model (avoids AVX2 saturation).")
    ] = _DEFAULTS.int8_options.reduce_range,
    max_recall_drop: Annotated[
        list[str] | None,
        typer.Option("--max-recall-drop", help=f"Allowed Recall@1 drop in points, e.g. {MAX_DROP_EXAMPLE} (repeatable; defaults {_LIMITS})."),
    ] = None,
    trt_min_batch: Annotated[int, typer.Option("--trt-min-batch", help="TensorRT profile: smallest batch.")] = _DEFAULTS.profile.min,
    trt_opt_batch: Annotated[int, typer.Option("--trt-opt-batch", help="TensorRT profile: batch to tune for.")] = _DEFAULTS.profile.opt,
    trt_max_batch: Annotated[int, typer.Option("--trt-max-batch", help="TensorRT profile: largest batch.")] = _DEFAULTS.profile.max,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset to export with.")] = _DEFAULTS.opset,
    decode: Annotated[
        Decode | None,
        typer.Option(
            "--decode",
            help="JPEG decoding the bundle records: full, or reduced (judged against full, and full over --max-recall-drop decode; "
            "default: the run's).",
        ),
    ] = _DEFAULTS.decode,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at --out.")] = _DEFAULTS.force,
    log: Annotated[
        bool, typer.Option("--log", help="Add the validation table and verdict to the tracker runs the run was trained with (--log).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export summary as JSON on stdout (progress goes to stderr).")] = False,
) -> None:
    """Export a trained run to ONNX (fp32, optionally fp16 / int8) and TensorRT, validated by Recall@K drop."""
    from proxyembed.extras import require_extras

    require_extras("proxyembed export", "train", "export")
    from proxyembed.export.options import BatchProfile, Int8Options, max_drop_limits
    from proxyembed.export.pipeline import export_run
    from proxyembed.export.report import validation_rows, validation_table
    from proxyembed.runtime.options import parse_key_values
    from proxyembed.runtime.progress import RichReporter

    opts = ExportOptions(
        run=run,
        out=out,
        fp16=fp16,
        int8=int8,
        tensorrt=tensorrt,
        data=data,
        calibration_size=calibration_size,
        int8_options=Int8Options(method=calibration_method, float_first_conv=int8_float_first_conv, reduce_range=int8_reduce_range),
        max_drop=max_drop_limits(
            parse_key_values(max_recall_drop or [], "--max-recall-drop", example=MAX_DROP_EXAMPLE, keys=PRECISION_MAX_DROP,
                             form="PRECISION=POINTS")
        ),
        profile=BatchProfile(trt_min_batch, trt_opt_batch, trt_max_batch),
        force=force,
        opset=opset,
        decode=decode,
    )
    out_console = err_console if as_json else console
    with reopened_tracking((run if run.is_dir() else run.parent) if log else None, out_console) as session:
        with RichReporter(out_console) as reporter:
            result = export_run(opts, reporter)
        rows, numbers = validation_rows(result.report)
        verdict = "passed" if not (result.refused or result.failed) else f"refused {len(result.refused) + len(result.failed)} artifact(s)"
        session.log_report("export", rows, numbers, verdict)
    out_console.print(validation_table(result.report))
    for art in result.artifacts:
        if art.device:
            dev = art.device
            out_console.print(f"  {art.file}: built for {dev['gpu_name']} (sm {dev['compute_capability']}), TensorRT {dev['tensorrt_version']}")
    if as_json:
        print_json(result.summary())
    result.raise_if_refused()
    out_console.print(f"[bold green]bundle written:[/] {escape(str(result.bundle))}", highlight=False)
