"""fp32 ONNX -> fp16 ONNX with fp32 inputs and outputs, the embedding head and L2 normalisation in fp32.

onnxconverter-common's ``convert_float_to_float16(keep_io_types=True, ...)``; the L2 normalisation's
sum of squares overflows in fp16 (512 values of magnitude ~20 already exceed 65504), so the head and
everything after it stay fp32 via ``node_block_list``; the head is one small GEMM, so this costs nothing.
The model is for ONNX Runtime's CUDA provider and TensorRT: x86 ONNX Runtime has no fp16 convolution
and runs it through casts, slower than fp32, so on a CPU it is validated for correctness only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from proxyembed.runtime.errors import require

from .graph import float_tail, name_nodes


def convert_fp16(src: Path, dst: Path) -> list[str]:
    """Write the fp16 twin of ``src`` to ``dst``; returns the names of the nodes kept in fp32."""
    onnx = require("onnx", "export")
    float16 = require("onnxconverter_common.float16", "export")
    model = onnx.load(str(src))
    name_nodes(model)
    keep = float_tail(model)
    with warnings.catch_warnings():  # one warning per weight below fp16's range (it is clamped to 1e-7): noise
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    _fuse_cast_round_trips(converted, {i.name: i for i in onnx.load(str(src)).graph.initializer})
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    return keep


def _fuse_cast_round_trips(model, fp32_initializers: dict) -> None:
    """Remove the fp32 -> fp16 -> fp32 round trips the converter leaves inside the fp32 tail and at the output.

    onnxconverter-common 1.16 wraps every blocked node on its own: the head's fp32 output is cast to fp16
    and back before the normalisation reads it, the head's weights are stored in fp16 and cast up, and
    the last node's output is cast to fp16 even with ``keep_io_types``. Each breaks the contract above,
    so blocked nodes read fp32 tensors directly, their weights are the source model's fp32 ones
    (``fp32_initializers``), and the graph output is the fp32 result.
    """
    onnx = require("onnx", "export")
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    graph = model.graph

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    def rewire(old: str, new: str) -> None:
        for n in graph.node:
            for i, name in enumerate(n.input):
                if name == old:
                    n.input[i] = new

    producer = {out: n for n in graph.node for out in n.output}
    outputs = {o.name: o for o in graph.output}
    inits = {i.name: i for i in graph.initializer}
    dropped: set[str] = set()
    for down in [n for n in graph.node if cast_to(n) == f32]:
        src = down.input[0]
        if src in inits and src in fp32_initializers:  # an fp16-stored weight read by a blocked node
            restored = f"{src}__fp32"
            if restored not in inits:
                inits[restored] = onnx.TensorProto()
                inits[restored].CopyFrom(fp32_initializers[src])
                inits[restored].name = restored
                graph.initializer.append(inits[restored])
            rewire(down.output[0], restored)
            dropped.add(down.name)
        elif src in producer and cast_to(producer[src]) == f16:  # fp32 -> fp16 -> fp32 between blocked nodes
            rewire(down.output[0], producer[src].input[0])
            dropped.add(down.name)
    for cast in [n for n in graph.node if cast_to(n) == f16 and n.output[0] in outputs]:
        src = producer.get(cast.input[0])
        if src is not None and src.op_type != "Cast":  # a blocked (fp32) node feeds the graph output
            src.output[list(src.output).index(cast.input[0])] = cast.output[0]
            outputs[cast.output[0]].type.tensor_type.elem_type = f32
            dropped.add(cast.name)
    kept = [n for n in graph.node if n.name not in dropped]
    used = {i for n in kept for i in n.input} | set(outputs)
    kept = [n for n in kept if not (cast_to(n) == f16 and n.output[0] not in used)]  # now-orphaned down-casts
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    live = {o for n in kept for o in n.output}
    for v in [v for v in graph.value_info if v.name not in live or v.name in outputs]:
        graph.value_info.remove(v)
