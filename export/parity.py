"""Numerical parity of the fp32 ONNX file with the PyTorch model, before any retrieval metric.

Compare at batch 1 and batch 8 (``check_parity``'s default; export uses it), on real images and random
ones. Real images catch preprocessing-range effects, random ones cover inputs outside the data; batch 1
and a batch above 1 together prove the batch axis is dynamic and batch-independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proxyembed.runtime.errors import CheckFailed
from proxyembed.runtime.evaluation import EncodeBatch

MAX_ABS_DIFF = 1e-4


@dataclass(frozen=True)
class ParityResult:
    """Worst absolute difference of normalised embeddings, per check, and the overall verdict."""

    diffs: dict[str, float]
    tolerance: float

    @property
    def max_abs_diff(self) -> float:
        return max(self.diffs.values())

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def check_parity(
    reference: EncodeBatch,
    candidate: EncodeBatch,
    real: np.ndarray,
    *,
    batch_sizes: tuple[int, ...] = (1, 8),
    tolerance: float = MAX_ABS_DIFF,
    seed: int = 0,
) -> ParityResult:
    """Compare ``candidate`` with ``reference`` on ``real`` images and on random ones at each batch size.

    ``real`` is a preprocessed NCHW batch with at least ``max(batch_sizes)`` images (fewer are reused).
    """
    rng = np.random.default_rng(seed)
    random = rng.standard_normal((max(batch_sizes), *real.shape[1:])).astype(np.float32)
    diffs: dict[str, float] = {}
    for kind, pool in (("real", real), ("random", random)):
        for b in batch_sizes:
            batch = np.resize(pool, (b, *pool.shape[1:])).astype(np.float32)
            diffs[f"{kind}@{b}"] = float(np.abs(reference(batch) - candidate(batch)).max())
    return ParityResult(diffs=diffs, tolerance=tolerance)


def require_parity(result: ParityResult, what: str) -> None:
    """Raise :class:`CheckFailed` (exit 1) when the ONNX model disagrees with PyTorch."""
    if not result.passed:
        worst = max(result.diffs, key=result.diffs.get)
        raise CheckFailed(
            f"{what} differs from PyTorch by {result.max_abs_diff:.2e} (on {worst}; limit {result.tolerance:.0e})",
            hint="the exporter changed the network's numerics; try another --opset or report the backbone",
        )
