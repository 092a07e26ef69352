"""proxyembed.export: torch -> ONNX / TensorRT in fp32, fp16 and int8, validated by Recall@K drop.

Calling the package, ``proxyembed.export(run, out, int8=True)``, runs :func:`proxyembed.export.api.export`.
"""

from proxyembed._callable_module import make_callable

make_callable(__name__, "proxyembed.export.api", "export")
