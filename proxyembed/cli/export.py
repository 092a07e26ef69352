"""``proxyembed export``: a run dir -> a validated bundle of ONNX (and TensorRT) models.

A thin command: options become :class:`~proxyembed.export.pipeline.ExportOptions`, the pipeline does
the work, and this module only prints (rich steps, a progress bar, the validation table) and turns a
refused artifact into exit 1 (bad input is exit 2 through :func:`user_errors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from proxyembed.export.choices import CalibrationMethod
from proxyembed.runtime.preprocess import Decode

from ._common import console, err_console, print_json, user_errors
from ._tracking import reopened_tracking


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    app.command("export", no_args_is_help=True, rich_help_panel="Export")(export_command)


@user_errors
def export_command(
    run: Annotated[Path, typer.Argument(help="Run dir written by `proxyembed train` (or a .pt checkpoint).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write, e.g. bundles/NAME.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="Also export fp16 (for GPUs; validated but slower on CPU).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also export int8: a uint8-activation CPU model and a symmetric one for TensorRT.")] = False,
    tensorrt: Annotated[bool, typer.Option("--tensorrt", help="Also build TensorRT engines (needs a GPU and tensorrt).")] = False,
    data: Annotated[str | None, typer.Option("--data", help="Data for validation and calibration (default: the run's).")] = None,
    calibration_size: Annotated[int, typer.Option("--calibration-size", help="Training images to calibrate int8 on.")] = 256,
    calibration_method: Annotated[
        CalibrationMethod, typer.Option("--calibration-method", help="int8 calibration: minmax, percentile or entropy.")
    ] = "minmax",
    int8_float_first_conv: Annotated[
        bool, typer.Option("--int8-float-first-conv", help="Keep the first conv in float (accuracy over speed).")
    ] = False,
    int8_reduce_range: Annotated[
        bool, typer.Option("--int8-reduce-range", help="7-bit weights for the CPU int8 model (avoids AVX2 saturation).")
    ] = False,
    max_recall_drop: Annotated[
        list[str] | None,
        typer.Option("--max-recall-drop", help="Allowed Recall@1 drop in points, e.g. fp16=0.5,int8=1.0 (repeatable; fp32 default 0.1)."),
    ] = None,
    trt_min_batch: Annotated[int, typer.Option("--trt-min-batch", help="TensorRT profile: smallest batch.")] = 1,
    trt_opt_batch: Annotated[int, typer.Option("--trt-opt-batch", help="TensorRT profile: batch to tune for.")] = 16,
    trt_max_batch: Annotated[int, typer.Option("--trt-max-batch", help="TensorRT profile: largest batch.")] = 64,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset to export with.")] = 18,
    decode: Annotated[
        Decode | None,
        typer.Option(
            "--decode",
            help="JPEG decoding the bundle records: full, or reduced (judged against full, and full over --max-recall-drop decode; "
            "default: the run's).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at --out.")] = False,
    log: Annotated[
        bool, typer.Option("--log", help="Add the validation table and verdict to the tracker runs the run was trained with (--log).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export summary as JSON on stdout (progress goes to stderr).")] = False,
) -> None:
    """Export a trained run to ONNX (fp32, optionally fp16 / int8) and TensorRT, validated by Recall@K drop."""
    from proxyembed.extras import require_extras

    require_extras("proxyembed export", "train", "export")
    from proxyembed.export.int8 import Int8Options
    from proxyembed.export.pipeline import ConsoleReporter, ExportOptions, run_export
    from proxyembed.export.report import validation_rows, validation_table
    from proxyembed.export.tensorrt import BatchProfile
    from proxyembed.export.validate import parse_max_drop

    opts = ExportOptions(
        run=run,
        out=out,
        fp16=fp16,
        int8=int8,
        tensorrt=tensorrt,
        data=data,
        calibration_size=calibration_size,
        int8_options=Int8Options(method=calibration_method, float_first_conv=int8_float_first_conv, reduce_range=int8_reduce_range),
        max_drop=parse_max_drop(max_recall_drop or []),
        profile=BatchProfile(trt_min_batch, trt_opt_batch, trt_max_batch),
        force=force,
        opset=opset,
        decode=decode,
    )
    out_console = err_console if as_json else console
    with reopened_tracking((run if run.is_dir() else run.parent) if log else None, out_console) as session:
        result = run_export(opts, ConsoleReporter(out_console))
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
