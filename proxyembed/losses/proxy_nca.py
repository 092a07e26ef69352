r"""Proxy-NCA (Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies", ICCV 2017, the
proxy NCA loss) and ProxyNCA++ (Teh, DeVries, Taylor, "ProxyNCA++: Revisiting and Revitalizing Proxy
Neighborhood Component Analysis", ECCV 2020, the loss with its temperature).

With unit-norm embeddings and proxies and a scale ``s``, ``d(x, p) = ||s x - s p||^2 = 2 s^2 (1 - cos(x, p))``.

Proxy-NCA, the paper's form, with negatives only in the denominator (so the loss can be negative):

.. math:: \ell(x, y) = -\log \frac{e^{-d(x, p_y)}}{\sum_{z \ne y} e^{-d(x, p_z)}}

ProxyNCA++, the positive in the denominator too (a softmax cross-entropy, never negative), with ``s = 3``
(``||3x - 3p||^2``, i.e. the paper's temperature T = 1/9):

.. math:: \ell(x, y) = -\log \frac{e^{-d(x, p_y)}}{\sum_{z} e^{-d(x, p_z)}}

Both are averaged over the batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from proxyembed.runtime.errors import BadInput

from .base import ProxyLoss, require_positive


class ProxyNCALoss(ProxyLoss):
    """Proxy-NCA in the paper's form (Movshovitz-Attias 2017): negatives only in the denominator."""

    name = "proxy_nca"
    include_positive: ClassVar[bool] = False

    def __init__(self, num_classes: int, dim: int, *, scale: float = 1.0) -> None:
        super().__init__(num_classes, dim)
        if not self.include_positive and num_classes < 2:
            raise BadInput(f"{self.name} needs at least 2 classes (its denominator sums over the other classes)")
        self.scale = require_positive("scale", scale)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T
        logits = -2 * self.scale**2 * (1 - cos)  # -d(x, p) for every proxy, (B, C)
        positive = logits.gather(1, labels[:, None]).squeeze(1)
        if not self.include_positive:
            logits = logits.masked_fill(F.one_hot(labels, self.num_classes).bool(), float("-inf"))
        return (torch.logsumexp(logits, dim=1) - positive).mean()

    def hyperparameters(self) -> dict[str, Any]:
        return {"scale": self.scale}


class ProxyNCAPlusPlusLoss(ProxyNCALoss):
    """ProxyNCA++ (Teh 2020): the positive in the denominator and ``||3x - 3p||^2`` by default."""

    name = "proxy_nca++"
    include_positive: ClassVar[bool] = True

    def __init__(self, num_classes: int, dim: int, *, scale: float = 3.0) -> None:
        super().__init__(num_classes, dim, scale=scale)
