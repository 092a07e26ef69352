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

**Proxy assignment** (the paper's Sec. 3.2; ``assignment``, ``proxies_per_class``, ``num_proxies``):

- ``assignment="static"`` (default): proxies belong to classes, ``proxies_per_class=K`` of each (default 1,
  the paper's static rule). With K > 1 a sample's positive proxy is the nearest one of its own class
  and the negatives are the proxies of every other class; the class's other K-1 proxies are left out
  of the denominator, since the sample may rightly sit near another mode of its own class. ProxyNCA++
  keeps the chosen positive in its denominator as always.
- ``assignment="dynamic"``: ``num_proxies=N`` proxies with no class. Every sample is assigned to its
  nearest proxy, ``p(u) = argmax_p cos(u, p)`` (no gradient flows through the argmax), and labels only
  say which samples of the batch match. For an anchor ``x`` with in-batch positives ``Y`` and negatives
  ``Z`` the loss is, with ``P+ = {p(y) : y in Y}`` and ``P- = {p(z) : z in Z} \ P+``,

  .. math:: \ell(x) = \frac{1}{|P^+|} \sum_{q \in P^+} \Big( d(x, q) + \log \sum_{n \in P^-} e^{-d(x, n)} \Big)

  (ProxyNCA++: ``q`` joins its own denominator). Choices for the cases the paper leaves open:
  a proxy is counted once however many positives or negatives chose it (the loss compares regions of
  the space, not sample counts); a proxy that both a positive and a negative chose is dropped from the
  negatives, so ``x`` is never pushed away from where its match lies (the negative keeps its own
  anchor terms, which pull it elsewhere); an anchor with no positive in the batch, or no negative proxy
  left, contributes nothing, and a batch without any such anchor gives a zero loss that stays in the
  autograd graph. Choose ``N`` at least the number of classes in a batch: with fewer proxies, matching
  and non-matching samples must share proxies and the shared ones drop out.

  **Idle proxies are revived.** The nearest-proxy rule rewards the rich: a proxy that wins many samples
  is pulled towards all of them and wins more. An untrained network maps every image to nearly the
  same point, so from scratch every sample soon chooses one proxy; then every negative shares the
  positives' proxy, no anchor is left and the loss is exactly 0 for good (measured: resnet18 from
  scratch on the synthetic data, Recall@1 0.04 -> 0.03 in 10 epochs, loss 0 from the second). So, as
  k-means does with an empty cluster, a proxy that has won no sample for ``3 N / classes-in-the-batch``
  training steps (about three times the steps a class takes to come round again) is moved onto a
  sample whose proxy is shared with another class in the batch, one sample per such class. Proxies
  that still win samples are never moved. In ``eval()`` mode and under multi-process training (where
  each process sees another batch and the proxies must stay identical) nothing is revived.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from proxyembed.runtime.errors import BadInput

from .base import ProxyLoss, require_count, require_positive

Assignment = Literal["static", "dynamic"]


class ProxyNCALoss(ProxyLoss):
    """Proxy-NCA in the paper's form (Movshovitz-Attias 2017): negatives only in the denominator."""

    # Training from an unknown image folder: scale 3 (ProxyNCA++'s temperature 1/9) instead of the paper's 1,
    # measured on held-out training classes of real photos (docs/defaults.md); the loss itself keeps 1.
    train_defaults: ClassVar[dict[str, Any]] = {"loss_params": {"scale": 3.0}}
    include_positive: ClassVar[bool] = False

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        scale: float = 1.0,
        assignment: Assignment = "static",
        num_proxies: int | None = None,
        proxies_per_class: int = 1,
    ) -> None:
        if assignment not in Assignment.__args__:
            raise BadInput(f"loss parameter 'assignment' must be one of {list(Assignment.__args__)}, got {assignment!r}")
        if assignment == "dynamic":
            if num_proxies is None or proxies_per_class != 1:
                raise BadInput(
                    "assignment=dynamic takes num_proxies=N (a free set of proxies) and no proxies_per_class",
                    hint="e.g. --loss-param assignment=dynamic --loss-param num_proxies=64",
                )
            num_proxies = require_count("num_proxies", num_proxies, minimum=1 if self.include_positive else 2)
        elif num_proxies is not None:
            raise BadInput("num_proxies is for assignment=dynamic; static proxies are proxies_per_class x classes")
        super().__init__(num_classes, dim, proxies_per_class=proxies_per_class, num_proxies=num_proxies)
        # training steps since each proxy last won a sample (dynamic assignment); not saved: a resumed run starts afresh
        self.register_buffer("idle_steps", torch.zeros(len(self.proxies), dtype=torch.long), persistent=False)
        if not self.include_positive and assignment == "static" and num_classes < 2:
            raise BadInput(f"{self.name} needs at least 2 classes (its denominator sums over the other classes)")
        self.scale = require_positive("scale", scale)
        self.assignment: Assignment = assignment

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.assignment == "dynamic" and self.training and not _multi_process():
            self._revive_idle_proxies(embeddings.detach(), labels)
        cos = F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T
        logits = -2 * self.scale**2 * (1 - cos)  # -d(x, p) for every proxy, (B, P)
        if self.assignment == "dynamic":
            return self._dynamic(logits, cos, labels)
        rows = self.assign_within_class(cos, labels)
        positive = logits.gather(1, rows[:, None]).squeeze(1)
        own_class = self.proxy_classes()[None, :] == labels[:, None]
        chosen = F.one_hot(rows, len(self.proxies)).bool()
        excluded = own_class & ~chosen if self.include_positive else own_class
        return (torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1) - positive).mean()

    def _dynamic(self, logits: Tensor, cos: Tensor, labels: Tensor) -> Tensor:
        """The dynamic-assignment loss of the module docstring, over every anchor of the batch."""
        chosen = F.one_hot(cos.detach().argmax(dim=1), len(self.proxies)).to(logits.dtype)  # (B, P)
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        pos = (same.to(logits.dtype) @ chosen) > 0  # (anchor, proxy): a positive of the anchor chose it
        neg = ((~same).fill_diagonal_(False).to(logits.dtype) @ chosen > 0) & ~pos
        log_denominator = torch.logsumexp(logits.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)  # (B, 1)
        if self.include_positive:
            log_denominator = torch.logaddexp(log_denominator, logits)  # each positive proxy in its own term
        valid = pos & neg.any(dim=1, keepdim=True)
        per_pair = (log_denominator - logits).masked_fill(~valid, 0.0)
        anchors = valid.any(dim=1)
        if not anchors.any():
            return logits.sum() * 0.0
        per_anchor = per_pair.sum(dim=1)[anchors] / valid.sum(dim=1)[anchors]
        return per_anchor.mean()

    @torch.no_grad()
    def _revive_idle_proxies(self, embeddings: Tensor, labels: Tensor) -> None:
        """Count idle steps, then move long-idle proxies onto samples of classes crowded into a shared proxy."""
        x = F.normalize(embeddings, dim=1)
        won = (x @ F.normalize(self.proxies, dim=1).T).argmax(dim=1)
        self.idle_steps += 1
        self.idle_steps[won] = 0
        patience = 3 * len(self.proxies) // max(int(labels.unique().numel()), 1)
        idle = torch.nonzero(self.idle_steps > patience).flatten()
        crowded = ((won[:, None] == won[None, :]) & (labels[:, None] != labels[None, :])).any(dim=1)
        if not len(idle) or not crowded.any():
            return
        rows = torch.nonzero(crowded).flatten()
        seen = labels[rows][:, None] == labels[rows][None, :]
        picked = rows[~torch.tril(seen, diagonal=-1).any(dim=1)][: len(idle)]  # one sample per crowded class, the first
        targets = idle[: len(picked)]
        self.proxies[targets] = (x[picked] * self.proxies.norm(dim=1).mean()).to(self.proxies.dtype)
        self.idle_steps[targets] = 0

    def hyperparameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {"scale": self.scale, "assignment": self.assignment}
        if self.assignment == "dynamic":
            params["num_proxies"] = len(self.proxies)
        else:
            params["proxies_per_class"] = self.proxies_per_class
        return params


class ProxyNCAPlusPlusLoss(ProxyNCALoss):
    """ProxyNCA++ (Teh 2020): the positive in the denominator and ``||3x - 3p||^2`` by default."""

    include_positive: ClassVar[bool] = True
    # The official optimizer (euwern/proxynca_pp, config/cub.json): Adam with eps 1.0 for every group, no
    # weight decay, base lr 4e-3 and "fast" proxies at lr 4e2 = 1e5 x the base lr. With eps 1.0 Adam steps
    # about lr x gradient for gradients well below 1, so these learning rates mean what they do in SGD.
    train_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "adam",
        "adam_eps": 1.0,
        "weight_decay": 0.0,
        "lr": 4e-3,
        "proxy_lr_mult": 1e5,
    }

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        scale: float = 3.0,
        assignment: Assignment = "static",
        num_proxies: int | None = None,
        proxies_per_class: int = 1,
    ) -> None:
        super().__init__(
            num_classes, dim, scale=scale, assignment=assignment, num_proxies=num_proxies, proxies_per_class=proxies_per_class
        )


def _multi_process() -> bool:
    """Whether this is one of several data-parallel processes (each revives nothing on its own batch)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
