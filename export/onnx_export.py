"""PyTorch embedding network -> one self-contained fp32 ONNX file with a dynamic batch axis.

Exporter choice: the dynamo (``torch.export``) exporter, PyTorch's default and maintained path since
2.9; the TorchScript exporter is deprecated. Its known traps (PyTorch's ``torch.onnx.export(dynamo=True)`` docs) are handled here:
an example batch of 1 would specialise the batch axis to 1, so we trace a batch of 2 and declare the axis
dynamic; it writes weights to an external-data file unless told not to, so ``external_data=False`` keeps
one file (protobuf's 2 GB limit is checked first); the opset is pinned so a PyTorch upgrade does not
silently change the graph; the model is put in eval mode so BatchNorm uses its running statistics.
"""

from __future__ import annotations

import re
from pathlib import Path

from proxyembed.runtime.errors import BadInput, require

from .options import DEFAULT_OPSET

INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
TRACE_BATCH = 2  # >= 2: a batch of 1 specialises the batch axis (see the module docstring)
_PROTOBUF_LIMIT = 2 * 1024**3
_OP_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w.]+)'"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),
    re.compile(r"\b(aten\.[\w.]+)"),
)


def export_onnx(model, path: Path, *, crop: int, backbone: str, opset: int = DEFAULT_OPSET) -> None:
    """Write ``model`` (NCHW float32 -> (N, D)) to ``path`` and run the ONNX checker on it.

    Raises :class:`BadInput` naming the operator and the backbone when the exporter cannot express an op.
    """
    torch = require("torch", "train")
    onnx = require("onnx", "export")
    require("onnxscript", "export")  # the dynamo exporter's op library; a clearer error than torch's
    if opset < 18:
        raise BadInput(f"--opset {opset} is too old for the dynamo exporter", hint="use --opset 18 or newer")
    model = model.eval()
    n_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    if n_bytes >= _PROTOBUF_LIMIT:
        raise BadInput(
            f"backbone '{backbone}' has {n_bytes / 1024**3:.1f} GB of weights; one ONNX file holds at most 2 GB",
            hint="export a smaller backbone",
        )
    example = torch.randn(TRACE_BATCH, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types (torch.export, dispatch, conversion)
        op = unexportable_op(exc)
        raise BadInput(
            f"backbone '{backbone}' uses operator '{op}', which the ONNX exporter (opset {opset}) cannot express",
            hint="choose another backbone, or a newer --opset if one supports the op",
        ) from exc
    onnx.checker.check_model(str(path), full_check=True)


def unexportable_op(exc: BaseException) -> str:
    """The operator named in an exporter failure (searching the exception chain), else its first line."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in reversed(chain):  # the innermost cause names the op most precisely
        for pattern in _OP_PATTERNS:
            match = pattern.search(str(err))
            if match:
                return match.group(1).removesuffix(".default")
    return f"{type(chain[-1]).__name__}: {str(chain[-1]).strip().splitlines()[0] if str(chain[-1]).strip() else ''}"
