"""What export says: the validation table, its rows for ``export --log``, and the advice on a refusal.

The table shows the PyTorch reference, then every artifact with its drop and verdict. It is kept under
80 columns for the usual Ks (1, 2, 4, 8) so it reads in any terminal and in CI logs; R-Precision and the
mean cosine are in the manifest, not the table. The pipeline (:mod:`.pipeline`) only orchestrates: it
reports its steps through the runtime's :class:`~proxyembed.runtime.progress.Reporter` and takes its
words of advice from here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from rich import box
from rich.table import Table

from proxyembed.runtime.metrics import GATE_METRIC

from .validate import ValidationReport


def validation_table(report: ValidationReport) -> Table:
    """Metrics in percent, Recall@1 drop in points, worst per-sample cosine to the reference, verdict against the limit."""
    metric_keys = [f"recall@{k}" for k in report.ks] + ["map@r"]
    headers = [f"R@{k}" for k in report.ks] + ["MAP@R"]
    title = (f"Validation on {report.data.get('name', 'data')}: {report.data.get('images', '?')} images of "
             f"{report.data.get('classes', '?')} held-out classes (%, drop in points)")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("artifact", no_wrap=True)
    for h in [*headers, "drop", "cos min", "verdict"]:
        table.add_column(h, justify="right", no_wrap=True)
    table.add_row("PyTorch fp32", *[f"{100 * report.reference[k]:.1f}" for k in metric_keys], "", "", "reference")
    for s in report.scores:
        verdict = f"[green]pass[/] <={s.threshold:g}" if s.passed else f"[bold red]FAIL[/] >{s.threshold:g}"
        name = s.file.rsplit(".", 1)[0] + ("" if s.precision in s.file else f" {s.precision}")
        table.add_row(
            name,
            *[f"{100 * s.metrics[k]:.1f}" for k in metric_keys],
            f"{s.drop[GATE_METRIC]:+.2f}",
            f"{s.cosine_min:.4f}",
            verdict,
        )
    return table


def validation_rows(report: ValidationReport) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The validation table as plain rows (fractions, drops in points) and its headline numbers, for ``export --log``:
    the PyTorch reference and every artifact's metrics, Recall@1 drop and verdict."""
    rows: list[dict[str, Any]] = [{"artifact": "PyTorch fp32", **report.reference, "drop": None, "verdict": "reference"}]
    numbers = {f"reference/{k}": v for k, v in report.reference.items()}
    for s in report.scores:
        rows.append({"artifact": s.file, "precision": s.precision, **s.metrics, "drop": s.drop[GATE_METRIC], "cos_min": s.cosine_min,
                     "verdict": "pass" if s.passed else f"FAIL (limit {s.threshold:g})"})
        numbers.update({f"{s.precision}/{k}": v for k, v in s.metrics.items()})
        numbers[f"{s.precision}/drop_{GATE_METRIC}"] = s.drop[GATE_METRIC]
    return rows, numbers


def refusal_advice(precisions: Collection[str], engine_failed: bool) -> str:
    """What to try when artifacts of these precisions were refused (and whether a TensorRT engine did not build)."""
    tips = ["TensorRT: check the engine's reason above; the ONNX artifacts run on ONNX Runtime's TensorRT provider"] if engine_failed else []
    if "int8" in precisions:
        tips.append("int8: more --calibration-size images, another --calibration-method (minmax/percentile/entropy), "
                    "--int8-float-first-conv or --int8-reduce-range to keep more in float")
    if "fp16" in precisions:
        tips.append("fp16: ship fp32 or int8 instead, or raise --max-recall-drop fp16=... if the drop is acceptable")
    if "fp32" in precisions:
        tips.append("fp32: the exported graph disagrees with PyTorch; try another --opset")
    return "; ".join(tips)
