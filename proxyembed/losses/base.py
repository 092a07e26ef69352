"""The base classes of every metric-learning loss: input checks in ``forward``, the maths in ``compute``.

:class:`MetricLoss` validates the batch (shapes, dtypes, label range) and raises :class:`ValueError` with
what was expected and what was found; subclasses only implement :meth:`MetricLoss.compute`.
:class:`ProxyLoss` adds one learnable proxy per training class, initialised as in the official
Proxy-Anchor code (``kaiming_normal_(mode='fan_out')``, Kim et al. 2020), and splits the loss's parameters
into proxies and the rest so the trainer can give each its own learning-rate multiplier.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from proxyembed.runtime.errors import BadInput


def require_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise :class:`BadInput` naming the loss parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BadInput(f"loss parameter '{name}' must be a positive number, got {value!r}")
    return float(value)


def require_fraction(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise :class:`BadInput` unless it lies in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise BadInput(f"loss parameter '{name}' must be a number in [0, 1), got {value!r}")
    return float(value)


def require_count(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value``, or raise :class:`BadInput` unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInput(f"'{name}' must be an integer >= {minimum}, got {value!r}")
    return value


class MetricLoss(nn.Module):
    """A loss over a batch of embeddings ``(B, D)`` and their training-class labels ``(B,)``.

    ``forward`` checks the inputs and returns a scalar. The computation runs outside autocast, in the
    loss's own precision: the dtype of its parameters if it has any, else at least float32, because
    scaled cosines (Proxy-Anchor's alpha=32) lose too much in half precision.
    """

    name: ClassVar[str]  # its --loss name, set from the registry (proxyembed.losses.LOSSES)
    uses_proxies: ClassVar[bool] = False
    # TrainConfig settings this loss needs instead of the generic defaults (a recipe or option still wins)
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = require_count("num_classes", num_classes)
        self.dim = require_count("dim", dim)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        self._check(embeddings, labels)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.compute(embeddings.to(self._working_dtype(embeddings)), labels)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The loss itself, on inputs ``forward`` has already checked."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """The keyword parameters that rebuild this loss with ``build_loss`` (for the run config)."""
        return {}

    def proxy_parameters(self) -> list[nn.Parameter]:
        """The class proxies (none for a pair-based loss)."""
        return []

    def other_parameters(self) -> list[nn.Parameter]:
        """Learnable parameters besides the proxies, e.g. NIR's normalizing flow."""
        return []

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"num_classes={self.num_classes}, dim={self.dim}" + (f", {params}" if params else "")

    def _working_dtype(self, embeddings: Tensor) -> torch.dtype:
        param = next(self.parameters(), None)
        if param is not None:
            return param.dtype
        return torch.promote_types(embeddings.dtype, torch.float32)

    def _check(self, embeddings: Tensor, labels: Tensor) -> None:
        where = type(self).__name__
        if not isinstance(embeddings, Tensor) or not isinstance(labels, Tensor):
            raise ValueError(
                f"{where}: embeddings and labels must be tensors, got {type(embeddings).__name__} "
                f"and {type(labels).__name__}"
            )
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(
                f"{where}: embeddings must have shape (batch, {self.dim}), got {tuple(embeddings.shape)}"
            )
        if not embeddings.is_floating_point():
            raise ValueError(f"{where}: embeddings must be floating point, got {embeddings.dtype}")
        if embeddings.shape[0] == 0:
            raise ValueError(f"{where}: the batch is empty")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"{where}: labels must have shape ({embeddings.shape[0]},) to match the embeddings, "
                f"got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"{where}: labels must be an integer tensor (torch.long), got {labels.dtype}")
        if labels.device != embeddings.device:
            raise ValueError(
                f"{where}: labels are on {labels.device} but embeddings on {embeddings.device}"
            )
        low, high = torch.stack([labels.min(), labels.max()]).tolist()  # one device sync for both bounds
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"{where}: labels must be training-class indices in [0, {self.num_classes}), "
                f"got values in [{low}, {high}]"
            )


class ProxyLoss(MetricLoss):
    """A loss with learnable proxies, saved in ``state_dict()`` as ``proxies``.

    By default one proxy per training class. ``proxies_per_class=K`` gives every class K proxies (rows
    ``c*K .. c*K+K-1`` belong to class ``c``), for classes with several modes; a sample then belongs to
    the nearest (cosine) proxy of its own class, an assignment that is recomputed every batch and
    carries no gradient itself (the distances to the chosen proxy do). ``num_proxies`` overrides the
    row count for losses whose proxies have no class (Proxy-NCA's dynamic assignment).
    """

    uses_proxies: ClassVar[bool] = True

    def __init__(self, num_classes: int, dim: int, *, proxies_per_class: int = 1, num_proxies: int | None = None) -> None:
        super().__init__(num_classes, dim)
        self.proxies_per_class = require_count("proxies_per_class", proxies_per_class)
        rows = num_proxies if num_proxies is not None else num_classes * self.proxies_per_class
        self.proxies = nn.Parameter(torch.empty(rows, dim))
        # As the official Proxy-Anchor code (tjddus9597/Proxy-Anchor-CVPR2020, losses.py).
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def proxy_parameters(self) -> list[nn.Parameter]:
        return [self.proxies]

    def proxy_classes(self) -> Tensor:
        """The class of every proxy row, ``(num_classes * proxies_per_class,)``."""
        return torch.arange(self.proxies.shape[0], device=self.proxies.device) // self.proxies_per_class

    def assign_within_class(self, cos: Tensor, labels: Tensor) -> Tensor:
        """The proxy row of each sample: the most similar of its own class's K proxies, given ``cos`` (B, C*K)."""
        k = self.proxies_per_class
        if k == 1:
            return labels
        own = cos.detach().view(len(labels), self.num_classes, k)[torch.arange(len(labels), device=labels.device), labels]
        return labels * k + own.argmax(dim=1)
