"""Everything ``proxyembed export`` can be told, with its defaults, importable without torch or onnx.

:class:`ExportOptions` is the one place the export defaults live: ``proxyembed export`` shows them in its
``--help`` by reading them from here (the command imports this module at start-up, so it stays free of
torch and onnx: an import-linter contract), and ``proxyembed.export(...)`` fills the same dataclass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.manifest import Target
from proxyembed.runtime.preprocess import Decode

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
"""How int8 calibration picks activation ranges (ONNX Runtime's calibrators)."""

DEFAULT_OPSET = 18

PRECISION_MAX_DROP: dict[str, float] = {"fp32": 0.1, "fp16": 0.5, "int8": 1.0, "decode": 0.3}
"""Allowed Recall@1 drop in points per artifact precision, and for reduced JPEG decoding against full decoding
(``proxyembed check`` keys its limits by metric instead: ``proxyembed.check.tolerances.METRIC_MAX_DROP``)."""
MAX_DROP_EXAMPLE = "fp16=0.5,int8=1.0"


def max_drop_limits(given: Mapping[str, float]) -> dict[str, float]:
    """:data:`PRECISION_MAX_DROP` with ``given``'s limits (points) over it; an unknown key is refused."""
    out = dict(PRECISION_MAX_DROP)
    for key, points in given.items():
        if key not in PRECISION_MAX_DROP:
            raise BadInput(f"--max-recall-drop: unknown key '{key}'", hint=f"keys: {', '.join(PRECISION_MAX_DROP)}; e.g. {MAX_DROP_EXAMPLE}")
        out[key] = float(points)
    return out


@dataclass(frozen=True)
class Int8Options:
    """How to quantize: calibration method, whether the first conv stays float, 7-bit weights on CPU."""

    method: CalibrationMethod = "minmax"
    float_first_conv: bool = False
    reduce_range: bool = False

    def details(self, target: Target) -> dict[str, object]:
        """The settings as recorded in the manifest artifact's ``details``."""
        sym = target == "gpu"
        return {
            "format": "QDQ",
            "activations": "int8 symmetric" if sym else "uint8 asymmetric",
            "weights": "int8 symmetric per-channel" + (" (7-bit reduce_range)" if self.reduce_range and not sym else ""),
            "calibration_method": self.method,
            "float_first_conv": self.float_first_conv,
        }


@dataclass(frozen=True)
class BatchProfile:
    """The TensorRT optimization profile's batch sizes: an engine accepts ``min..max`` and is tuned for ``opt``."""

    min: int = 1
    opt: int = 16
    max: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise BadInput(
                f"--trt-min-batch {self.min}, --trt-opt-batch {self.opt}, --trt-max-batch {self.max} are inconsistent",
                hint="need 1 <= min <= opt <= max",
            )


@dataclass
class ExportOptions:
    """Everything ``proxyembed export`` can be told (CLI options map one to one)."""

    run: Path
    out: Path
    fp16: bool = False
    int8: bool = False
    tensorrt: bool = False
    data: str | None = None
    calibration_size: int = 256
    int8_options: Int8Options = field(default_factory=Int8Options)
    max_drop: dict[str, float] = field(default_factory=lambda: dict(PRECISION_MAX_DROP))
    profile: BatchProfile = field(default_factory=BatchProfile)
    force: bool = False
    opset: int = DEFAULT_OPSET
    batch_size: int = 64
    decode: Decode | None = None  # None: the run's own preprocessing choice
