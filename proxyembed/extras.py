"""Which optional extras a feature needs, checked before any work starts.

``pip install proxyembed`` brings the runtime only (numpy, Pillow, onnxruntime, hnswlib): training,
evaluation and export need the ``train`` and ``export`` extras. A feature calls :func:`require_extras`
first, so a runtime-only install gets one line naming the extra instead of a ``ModuleNotFoundError``
traceback from deep inside an import chain.
"""

from __future__ import annotations

import importlib.util

from proxyembed.runtime.errors import MissingDependency

# Import names (not distribution names) of what each extra installs, as listed in pyproject.toml.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("torch", "torchvision", "timm", "sklearn", "scipy", "matplotlib"),
    "export": ("onnx", "onnxscript", "onnxconverter_common"),
    "serve": ("fastapi", "uvicorn", "python_multipart", "prometheus_client"),
    "ray": ("ray", "pyarrow", "pandas"),
    "quantized": ("usearch",),
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow",),
    "shards": ("webdataset", "braceexpand"),
}


def missing_modules(*extras: str) -> list[str]:
    """The modules of ``extras`` that cannot be imported here (blocked or absent), in declaration order."""
    missing = []
    for extra in extras:
        for module in EXTRA_MODULES[extra]:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a parent package is broken, or sys.modules holds None (blocked)
                found = False
            if not found:
                missing.append(module)
    return missing


def require_extras(feature: str, *extras: str) -> None:
    """Raise :class:`MissingDependency` (exit 2) naming the extras ``feature`` needs when any module is missing."""
    missing = missing_modules(*extras)
    if missing:
        raise MissingDependency(f"{feature} needs {', '.join(missing)}", hint=f'pip install "proxyembed[{",".join(extras)}]"')
