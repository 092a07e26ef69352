"""Datasets as plain lists of (image source, label), torch-free.

Training wraps them in a torch Dataset (``proxyembed.data.torch_dataset``); evaluation, export
validation, calibration and ``proxyembed check`` read them through the runtime's preprocessing only.
"""

from .resolve import resolve_data, resolve_eval_data
from .types import DataSplit, Sample

__all__ = ["DataSplit", "Sample", "resolve_data", "resolve_eval_data"]
