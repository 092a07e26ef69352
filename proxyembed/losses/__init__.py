"""Metric-learning losses and their registry: ``build_loss("proxy_anchor", num_classes, dim, alpha=32)``.

Every loss is an ``nn.Module`` called as ``loss(embeddings (B, D), labels (B,)) -> scalar``; see
:mod:`proxyembed.losses.base` for the contract and each module for its formula and paper reference.
"""

from __future__ import annotations

import inspect
from typing import Any

from proxyembed.runtime.errors import BadInput
from proxyembed.training.loss_table import LOSS_CLASSES

from .base import MetricLoss, ProxyLoss
from .nir import NIRLoss
from .proxy_anchor import ProxyAnchorLoss
from .proxy_nca import ProxyNCALoss, ProxyNCAPlusPlusLoss
from .triplet import TripletLoss

_CLASSES = {cls.__name__: cls for cls in (ProxyAnchorLoss, ProxyNCALoss, ProxyNCAPlusPlusLoss, TripletLoss, NIRLoss)}
LOSSES: dict[str, type[MetricLoss]] = {name: _CLASSES[class_name] for name, class_name in LOSS_CLASSES.items()}
"""The registry, built from the torch-free table the CLI's ``--loss`` choices come from (``training.loss_table.LOSS_CLASSES``)."""
for _name, _cls in LOSSES.items():
    _cls.name = _name  # each class is named by its registry entry, not by a second spelling of it


def loss_parameters(name: str) -> dict[str, Any]:
    """The keyword parameters the loss ``name`` accepts, with their defaults."""
    signature = inspect.signature(_loss_class(name).__init__)
    return {p.name: p.default for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY}


def loss_train_defaults(name: str) -> dict[str, Any]:
    """Training settings the loss ``name`` needs besides the generic defaults (see ``MetricLoss.train_defaults``)."""
    return dict(_loss_class(name).train_defaults)


def build_loss(name: str, num_classes: int, dim: int, **params: Any) -> MetricLoss:
    """Build the registered loss ``name`` for ``num_classes`` training classes and ``dim``-d embeddings.

    Raises :class:`BadInput` for an unknown name or parameter, naming the valid ones.
    """
    accepted = loss_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise BadInput(f"unknown parameter(s) {unknown} for loss '{name}'; valid parameters: {sorted(accepted)}")
    return LOSSES[name](num_classes, dim, **params)


def _loss_class(name: str) -> type[MetricLoss]:
    if name not in LOSSES:
        raise BadInput(f"unknown loss '{name}'; valid losses: {sorted(LOSSES)}")
    return LOSSES[name]


__all__ = [
    "LOSSES",
    "MetricLoss",
    "NIRLoss",
    "ProxyAnchorLoss",
    "ProxyLoss",
    "ProxyNCALoss",
    "ProxyNCAPlusPlusLoss",
    "TripletLoss",
    "build_loss",
    "loss_parameters",
    "loss_train_defaults",
]
