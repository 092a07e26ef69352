"""Embedding networks: a timm backbone, pooling, a linear head and L2 normalisation.

:mod:`.config` (``ModelConfig``, ``Pooling``) is torch-free, so the training config can use it where torch
is not installed; the network itself (:mod:`.embedder`) loads on first use of its names (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import ModelConfig, Pooling

if TYPE_CHECKING:
    from .embedder import Embedder, build_embedder

__all__ = ["Embedder", "ModelConfig", "Pooling", "build_embedder"]
_TORCH_NAMES = {"Embedder", "build_embedder"}


def __getattr__(name: str) -> Any:
    if name not in _TORCH_NAMES:
        raise AttributeError(f"module 'proxyembed.models' has no attribute {name!r}")
    return getattr(importlib.import_module("proxyembed.models.embedder"), name)
