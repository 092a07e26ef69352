r"""Proxy-Anchor loss (Kim, Kim, Cho, Kwak, "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020, Eq. 4).

.. math::

    \ell(X) = \frac{1}{|P^+|} \sum_{p \in P^+} \log\Big(1 + \sum_{x \in X_p^+} e^{-\alpha (s(x, p) - \delta)}\Big)
            + \frac{1}{|P|} \sum_{p \in P} \log\Big(1 + \sum_{x \in X_p^-} e^{\alpha (s(x, p) + \delta)}\Big)

``s`` is the cosine similarity, ``P`` all proxies, ``P+`` the proxies with at least one positive in the
batch, ``X_p^+`` / ``X_p^-`` the batch samples of / not of the proxy's class. Absent classes still act
as negatives (the second sum runs over all proxies), as in the paper and the official code. Defaults
alpha=32, delta=0.1 (paper Sec. 4.1). Each ``log(1 + sum exp(.))`` is computed as a ``logsumexp`` with a
zero logit appended, so no batch overflows or yields NaN.

With ``proxies_per_class=K`` every class has K proxies and each sample is a positive of the nearest
proxy of its own class only (``X_p^+`` = the samples assigned to ``p``); the class's other proxies see it
as neither positive nor negative, because it may well belong to a different mode of its own class.
``X_p^-`` stays every sample of another class, and ``P`` all ``C*K`` proxies. A dynamic, class-free
assignment has no meaning here: a proxy's positives are defined by its class.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ProxyLoss, require_fraction, require_positive


def log1p_sum_exp(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """``log(1 + sum exp(logits))`` over the ``mask``-selected entries along ``dim``; 0 where none is."""
    masked = logits.masked_fill(~mask, float("-inf"))
    zero = torch.zeros_like(masked.narrow(dim, 0, 1))
    return torch.logsumexp(torch.cat([masked, zero], dim=dim), dim=dim)


def proxy_anchor_terms(cos: Tensor, positive: Tensor, negative: Tensor, alpha: float, delta: float) -> Tensor:
    """Eq. 4 from the cosines ``(B, P)`` and the boolean masks of each proxy's positives and negatives."""
    pos = log1p_sum_exp(-alpha * (cos - delta), positive, dim=0)  # (P,), 0 for proxies without a positive
    neg = log1p_sum_exp(alpha * (cos + delta), negative, dim=0)
    return pos.sum() / positive.any(dim=0).sum() + neg.mean()


def proxy_anchor_loss(embeddings: Tensor, proxies: Tensor, labels: Tensor, alpha: float, delta: float) -> Tensor:
    """Eq. 4 of Kim et al. 2020 for embeddings ``(B, D)``, one proxy per class ``(C, D)`` and labels ``(B,)``."""
    cos = F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).T  # (B, C)
    positive = F.one_hot(labels, proxies.shape[0]).bool()
    return proxy_anchor_terms(cos, positive, ~positive, alpha, delta)


class ProxyAnchorLoss(ProxyLoss):
    """Proxy-Anchor (Kim 2020, Eq. 4): every proxy is an anchor against all samples of the batch."""

    # Training from an unknown image folder: alpha 8 instead of the paper's 32, measured on held-out training
    # classes of real photos (docs/defaults.md); the loss itself and the recipes keep the paper's 32.
    train_defaults: ClassVar[dict[str, Any]] = {"loss_params": {"alpha": 8.0}}

    def __init__(
        self, num_classes: int, dim: int, *, alpha: float = 32.0, delta: float = 0.1, proxies_per_class: int = 1
    ) -> None:
        super().__init__(num_classes, dim, proxies_per_class=proxies_per_class)
        self.alpha = require_positive("alpha", alpha)
        self.delta = require_fraction("delta", delta)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T  # (B, C*K)
        positive = F.one_hot(self.assign_within_class(cos, labels), len(self.proxies)).bool()
        negative = self.proxy_classes()[None, :] != labels[:, None]
        return proxy_anchor_terms(cos, positive, negative, self.alpha, self.delta)

    def hyperparameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "delta": self.delta, "proxies_per_class": self.proxies_per_class}
