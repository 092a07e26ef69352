"""Finding the nodes of an exported embedding graph that must stay in float.

The network ends in ``Linear head -> L2 normalisation`` (proxyembed.models.embedder). The normalisation
(``ReduceL2`` / ``ReduceSumSquare`` / ``LpNormalization``, or a ``Pow``/``Sqrt`` decomposition) and
the head feeding it form the *float tail*: fp16 overflows in the sum of squares, and int8 would quantise
the very numbers retrieval compares. The *first conv* reads raw normalised pixels; keeping it float is
the usual first thing to try when int8 accuracy is short.
"""

from __future__ import annotations

from typing import Any

from proxyembed.runtime.errors import BadInput

_NORM_OPS = ("ReduceL2", "ReduceSumSquare", "LpNormalization", "Sqrt")


def name_nodes(model: Any) -> None:
    """Give every unnamed node a unique name: block lists and quantizer exclusions address nodes by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def float_tail(model: Any) -> list[str]:
    """Names of the head node and every node downstream of it (the L2 normalisation included)."""
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    norm = next((n for n in reversed(nodes) if n.op_type in _NORM_OPS), None)  # the one nearest the output
    if norm is None:
        raise BadInput("the exported graph has no L2 normalisation node", hint="export an Embedder checkpoint from `proxyembed train`")
    head = producer.get(norm.input[0])
    while head is not None and head.op_type not in ("Gemm", "MatMul"):  # skip Pow/Mul before a Sqrt
        head = producer.get(head.input[0]) if head.input else None
    start = head or norm
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for inp in n.input:
            consumers.setdefault(inp, []).append(n)
    tail: dict[str, None] = {start.name: None}
    frontier = list(start.output)
    while frontier:
        for n in consumers.get(frontier.pop(), []):
            if n.name not in tail:
                tail[n.name] = None
                frontier.extend(n.output)
    return list(tail)


def first_conv(model: Any) -> str | None:
    """Name of the first Conv node that reads the graph input, if any."""
    inputs = {i.name for i in model.graph.input}
    for n in model.graph.node:
        if n.op_type == "Conv" and n.input and n.input[0] in inputs:
            return n.name
    return None
