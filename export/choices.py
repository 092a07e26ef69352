"""The export stage's closed choices, importable without torch or onnx so that ``proxyembed export`` can
type its options with them (the parser lists and checks the values)."""

from __future__ import annotations

from typing import Literal

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
"""How int8 calibration picks activation ranges (ONNX Runtime's calibrators)."""
