"""proxyembed: proxy-based image embeddings from training to the edge.

The Python API, one name per stage::

    import proxyembed
    run = proxyembed.train(epochs=2, out="runs/demo")          # -> Run (needs the train extra)
    result = proxyembed.evaluate(run)                          # -> EvalResult: best.pt's metrics, recomputed
    bundle = proxyembed.export(run, "bundles/demo", int8=True)  # -> Bundle (train + export extras)
    vectors = proxyembed.Encoder(bundle).encode(images)        # torch-free runtime
    report = proxyembed.check(bundle, "data/eval", "ci/baseline.json")  # -> CheckReport
    proxyembed.embed_ray(bundle, "photos/", "emb/photos")       # a corpus on a Ray cluster (ray extra)

Importing this package is cheap and never imports torch: the names above load on first use (PEP 562
``__getattr__``), so ``proxyembed.runtime`` works on devices without torch (docs/architecture.md). ``export`` and
``check`` are subpackages that can be called (see :mod:`proxyembed._callable_module`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from proxyembed._version import __version__

# public name -> (module, attribute); None as attribute means the module itself
_LAZY: dict[str, tuple[str, str | None]] = {
    "train": ("proxyembed.api", "train"),
    "embed_ray": ("proxyembed.scale", "embed_ray"),
    "evaluate": ("proxyembed.api", "evaluate"),
    "export": ("proxyembed.export", None),
    "check": ("proxyembed.check", None),
    "Run": ("proxyembed.run", "Run"),
    "TrainConfig": ("proxyembed.training.config", "TrainConfig"),
    "Bundle": ("proxyembed.runtime", "Bundle"),
    "Encoder": ("proxyembed.runtime", "Encoder"),
    "Index": ("proxyembed.runtime", "Index"),
    "Retriever": ("proxyembed.runtime", "Retriever"),
    "CheckReport": ("proxyembed.check", "CheckReport"),
    "ProxyEmbedError": ("proxyembed.runtime", "ProxyEmbedError"),
}

__all__ = [
    "Bundle", "CheckReport", "Encoder", "Index", "ProxyEmbedError", "Retriever", "Run", "TrainConfig", "__version__", "check", "embed_ray",
    "evaluate", "export", "train",
]

if TYPE_CHECKING:
    from proxyembed import check, export
    from proxyembed.api import evaluate, train
    from proxyembed.check import CheckReport
    from proxyembed.run import Run
    from proxyembed.runtime import Bundle, Encoder, Index, ProxyEmbedError, Retriever
    from proxyembed.scale import embed_ray
    from proxyembed.training.config import TrainConfig


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'proxyembed' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
