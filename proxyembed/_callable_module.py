"""Let a subpackage be called like a function: ``proxyembed.export(run, out)``, ``proxyembed.check(...)``.

``proxyembed.export`` and ``proxyembed.check`` are subpackages (the export stage, the CI gate) and also
the Python API's verbs. A package attribute can only be one object, and Python sets it to the submodule
as soon as anything imports ``proxyembed.export.pipeline``; so the submodule itself becomes callable
(its module class gains ``__call__``) instead of a function shadowing it only until the first import.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    """A module that, when called, imports ``__proxyembed_call__ = (module, function)`` and calls it."""

    __proxyembed_call__: tuple[str, str]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, function = self.__proxyembed_call__
        return getattr(importlib.import_module(module), function)(*args, **kwargs)


def make_callable(module_name: str, target_module: str, target_function: str) -> None:
    """Make the module ``module_name`` call ``target_module.target_function`` (imported on the first call)."""
    module = sys.modules[module_name]
    module.__class__ = _CallableModule
    module.__proxyembed_call__ = (target_module, target_function)  # type: ignore[attr-defined]
