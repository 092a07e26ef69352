"""Batch runners: the PyTorch reference and ONNX Runtime, behind one call signature.

A runner maps an NCHW float32 batch to (N, D) float32 embeddings. Validation feeds every runner the
same preprocessed batches, so each image is decoded once however many artifacts are judged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from proxyembed.runtime.errors import require

from .onnx_export import INPUT_NAME, OUTPUT_NAME

Runner = Callable[[np.ndarray], np.ndarray]


def torch_runner(model) -> Runner:
    """The PyTorch fp32 model in eval mode, gradients off: the reference every artifact is judged against."""
    torch = require("torch", "train")
    model = model.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()

    return run


def ort_session(path: Path, *, threads: int | None = None, providers: list[Any] | None = None):
    """An ONNX Runtime session with full graph optimisation; ``threads`` sets the intra-op pool."""
    ort = require("onnxruntime", "cpu")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])


def ort_runner(path: Path, *, threads: int | None = None) -> Runner:
    """An ONNX model on ONNX Runtime's CPU provider (fp32 in, fp32 out, whatever the precision inside)."""
    session = ort_session(path, threads=threads)

    def run(batch: np.ndarray) -> np.ndarray:
        out = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    return run
