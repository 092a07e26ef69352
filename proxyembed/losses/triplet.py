r"""Triplet loss with semi-hard negative mining in the batch (Schroff, Kalenichenko, Philbin, "FaceNet", CVPR 2015,
Eq. 2 and the semi-hard selection of Sec. 3.2, Eq. 4): the pair-based baseline.

With the cosine distance ``d(x, y) = 1 - cos(x, y)``, every anchor-positive pair ``(a, p)`` of the batch
(same label, ``a != p``) takes the hardest *semi-hard* negative, the closest ``n`` of another class with

.. math:: d(a, p) < d(a, n) < d(a, p) + m,

and the loss is the mean over the pairs that have one of ``d(a, p) - d(a, n) + m`` (margin ``m = 0.2``).
Pairs with no semi-hard negative are skipped; a batch with none at all gives a zero loss that stays in the
autograd graph, so ``backward`` still works.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MetricLoss, require_positive


def semihard_triplets(distances: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Indices ``(T, 3)`` of the (anchor, positive, negative) triplets chosen from a ``(B, B)`` distance matrix."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    d_ap = distances[:, :, None]  # (anchor, positive, 1)
    d_an = distances[:, None, :]  # (anchor, 1, negative)
    semihard = (~same)[:, None, :] & (d_an > d_ap) & (d_an < d_ap + margin)
    semihard &= (same & ~eye)[:, :, None]
    closest = d_an.expand_as(semihard).masked_fill(~semihard, float("inf")).argmin(dim=2)  # (anchor, positive)
    anchor, positive = semihard.any(dim=2).nonzero(as_tuple=True)
    return torch.stack([anchor, positive, closest[anchor, positive]], dim=1)


class TripletLoss(MetricLoss):
    """Triplet margin loss on cosine distances with in-batch semi-hard mining (FaceNet, Schroff 2015)."""

    def __init__(self, num_classes: int, dim: int, *, margin: float = 0.2) -> None:
        super().__init__(num_classes, dim)
        self.margin = require_positive("margin", margin)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        x = F.normalize(embeddings, dim=1)
        distances = 1 - x @ x.T
        triplets = semihard_triplets(distances.detach(), labels, self.margin)
        if len(triplets) == 0:
            return distances.sum() * 0.0
        a, p, n = triplets.unbind(dim=1)
        return (distances[a, p] - distances[a, n] + self.margin).mean()

    def hyperparameters(self) -> dict[str, Any]:
        return {"margin": self.margin}
