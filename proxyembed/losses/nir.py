r"""Non-isotropy regularization (NIR) on top of Proxy-Anchor (Roth, Vinyals, Akata, "Non-isotropy Regularization
for Proxy-based Deep Metric Learning", CVPR 2022).

A conditional normalizing flow ``tau(x | rho)`` maps each L2-normalised embedding ``x`` of class ``y`` to
``z``, conditioned on the L2-normalised proxy ``rho_y``; maximising ``p(x | rho_y)`` under a standard
normal base density asks the samples of a class to be a non-isotropic, learnable, invertible function
of their proxy. With ``v_i = ||z_i||^2 / 2 - log|det J_tau(x_i | rho_{y_i})|`` (the NLL up to the constant
``D/2 log 2 pi``), the loss is

.. math::

    \mathcal{L} = \frac{1}{B} \sum_i e^{v_i} \; + \; w \, \mathcal{L}_{\text{Proxy-Anchor}}  \quad (\text{objective="exp", default})

    \mathcal{L} = \frac{1}{B} \sum_i v_i \; + \; w \, \mathcal{L}_{\text{Proxy-Anchor}}      \quad (\text{objective="nll"})

``w = pa_weight`` defaults to 0.0075, the official recipe's CUB-200 value (0.01 for Cars196, 0.3 for SOP),
tuned with the "exp" form.

"exp" is the official code's ``mean(exp(v))``. It is the default because it is self-limiting: L2-normalised
embeddings lie on the unit sphere, a set of zero volume in R^D, so their likelihood is unbounded and the
plain NLL keeps rewarding the flow for contracting the sphere (down to the soft-clamp bound
``|log det| < ~2 * blocks * D``), dragging the embeddings along and swamping the Proxy-Anchor term;
``exp(v)`` and its gradient vanish once ``v`` is negative, so Proxy-Anchor takes over. On the synthetic
data (resnet18, D=32, 2 epochs) "exp" trained to R@1 0.27 while "nll" fell below the untrained R@1 (0.18)
as its loss ran to -100. ``exp`` overflows float32 at ``v > ~88``, which a flow trained at too high a
learning rate reaches; the official code escapes it by accident (its per-sample weights are a float64
numpy array, which promotes the reduction to float64). Here the reduction runs in float64 on purpose,
so the loss stays finite up to ``v ~ 709`` whatever the parameters' dtype. "nll" is kept for
experiments: it never overflows.

The flow, as the official code (ExplainableML/NonIsotropicProxyDML, ``criteria/nir.py``, built with FrEIA):
``blocks`` x [fixed random permutation -> conditional GLOW affine coupling (Kingma & Dhariwal 2018)],
the coupling's log-scales soft-clamped as FrEIA's ``GLOWCouplingBlock`` does since 2021,
``s -> clamp * 0.636 * atan(s)`` with clamp 2.0 (bounded by ``~clamp``, slope ``~1.27`` at zero). Each
subnet is a ReLU MLP of ``depth`` linear layers of width ``hidden`` on [half of x, condition]; the
defaults, 5 blocks, depth 8 and width 128, are the official ``--loss_nir_nf_cblocks``,
``--loss_nir_nf_fc_depth`` and ``--loss_nir_nf_fc_width``. The last layer of every subnet starts at zero,
so the flow starts as a permutation (Glow, Sec. 3.3); FrEIA's default init does not do this. The proxies
start as Proxy-Anchor's (kaiming, fan_out), not the official NIR code's ``randn / 8``; only their direction
enters the loss, but their norm sets the effective step size of the optimiser on them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proxyembed.runtime.errors import BadInput

from .base import ProxyLoss, require_count, require_fraction, require_positive
from .proxy_anchor import proxy_anchor_loss

Objective = Literal["nll", "exp"]


def _mlp(inputs: int, outputs: int, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` linear layers (``depth - 1`` hidden ones of width ``hidden``) with ReLUs between them."""
    layers: list[nn.Module] = []
    width = inputs
    for _ in range(depth - 1):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    last = nn.Linear(width, outputs)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def soft_clamp(s: Tensor, clamp: float) -> Tensor:
    """FrEIA's GLOW log-scale clamp, ``clamp * 0.636 * atan(s)``: ``|result| < ~clamp``, slope ``0.636 clamp`` at 0.

    0.636 ~ 2/pi makes the bound ``clamp``. Older FrEIA divided ``s`` by ``clamp`` inside the atan; the
    version the official NIR code installs does not, and per-sample NLLs differ by up to 0.5 between them.
    """
    return clamp * 0.636 * torch.atan(s)


class AffineCoupling(nn.Module):
    """A conditional GLOW coupling: each half of ``x`` is scaled and shifted by an MLP of the other half."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, depth: int, clamp: float) -> None:
        super().__init__()
        self.split = dim // 2
        self.clamp = clamp
        rest = dim - self.split
        self.net_second = _mlp(self.split + cond_dim, 2 * rest, hidden, depth)  # reads the 1st half, moves the 2nd
        self.net_first = _mlp(rest + cond_dim, 2 * self.split, hidden, depth)  # reads the new 2nd half, moves the 1st

    def _scale_shift(self, net: nn.Module, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        s, t = net(torch.cat([x, cond], dim=1)).chunk(2, dim=1)
        return soft_clamp(s, self.clamp), t

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x[:, : self.split], x[:, self.split :]
        s_b, t_b = self._scale_shift(self.net_second, a, cond)
        b = b * torch.exp(s_b) + t_b
        s_a, t_a = self._scale_shift(self.net_first, b, cond)
        a = a * torch.exp(s_a) + t_a
        return torch.cat([a, b], dim=1), s_a.sum(dim=1) + s_b.sum(dim=1)

    def inverse(self, y: Tensor, cond: Tensor) -> Tensor:
        a, b = y[:, : self.split], y[:, self.split :]
        s_a, t_a = self._scale_shift(self.net_first, b, cond)
        a = (a - t_a) * torch.exp(-s_a)
        s_b, t_b = self._scale_shift(self.net_second, a, cond)
        b = (b - t_b) * torch.exp(-s_b)
        return torch.cat([a, b], dim=1)


class ConditionalFlow(nn.Module):
    """``blocks`` x [fixed random permutation -> conditional GLOW coupling]; ``forward`` maps x -> (z, log|det J|)."""

    def __init__(self, dim: int, cond_dim: int, *, blocks: int, hidden: int, depth: int, clamp: float) -> None:
        super().__init__()
        if dim < 2:
            raise BadInput(f"a coupling flow needs an embedding dim >= 2, got {dim}")
        self.couplings = nn.ModuleList(AffineCoupling(dim, cond_dim, hidden, depth, clamp) for _ in range(blocks))
        for k in range(blocks):  # seeded per block as FrEIA's PermuteRandom(seed=k); stored in the state_dict
            perm = torch.randperm(dim, generator=torch.Generator().manual_seed(k))
            self.register_buffer(f"perm_{k}", perm)
            self.register_buffer(f"inv_perm_{k}", torch.argsort(perm))

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for k, coupling in enumerate(self.couplings):
            x, block_logdet = coupling(x[:, getattr(self, f"perm_{k}")], cond)
            logdet = logdet + block_logdet
        return x, logdet

    def inverse(self, z: Tensor, cond: Tensor) -> Tensor:
        for k in reversed(range(len(self.couplings))):
            z = self.couplings[k].inverse(z, cond)[:, getattr(self, f"inv_perm_{k}")]
        return z


def mean_exp(v: Tensor) -> Tensor:
    """``mean(exp(v))`` in float64, finite up to ``v ~ 709`` (float32 overflows at ``v ~ 88``).

    The result stays float64; the gradient reaching a float32 ``v``, ``exp(v_i) / B``, is finite up to
    ``v ~ 88 + log B``, beyond what a flow trained at the official learning rates reaches.
    """
    return torch.exp(torch.logsumexp(v.double(), dim=0) - math.log(len(v)))


class NIRLoss(ProxyLoss):
    """Proxy-Anchor plus the NIR flow likelihood (Roth 2022); see the module docstring for the formula."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        pa_weight: float = 0.0075,
        alpha: float = 32.0,
        delta: float = 0.1,
        objective: Objective = "exp",
        blocks: int = 5,
        hidden: int = 128,
        depth: int = 8,
        clamp: float = 2.0,
    ) -> None:
        super().__init__(num_classes, dim)
        self.pa_weight = require_positive("pa_weight", pa_weight)
        self.alpha = require_positive("alpha", alpha)
        self.delta = require_fraction("delta", delta)
        if objective not in Objective.__args__:
            raise BadInput(f"loss parameter 'objective' must be one of {list(Objective.__args__)}, got {objective!r}")
        self.objective: Objective = objective
        self.blocks = require_count("blocks", blocks)
        self.hidden = require_count("hidden", hidden)
        self.depth = require_count("depth", depth)
        self.clamp = require_positive("clamp", clamp)
        self.flow = ConditionalFlow(dim, dim, blocks=self.blocks, hidden=self.hidden, depth=self.depth, clamp=self.clamp)

    def flow_inputs(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The flow's input and condition: the L2-normalised embeddings and their classes' normalised proxies."""
        return F.normalize(embeddings, dim=1), F.normalize(self.proxies, dim=1)[labels]

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        z, logdet = self.flow(*self.flow_inputs(embeddings, labels))
        v = 0.5 * z.pow(2).sum(dim=1) - logdet
        if self.objective == "exp":
            flow_term = mean_exp(v)
        else:
            flow_term = v.mean()
        return flow_term + self.pa_weight * proxy_anchor_loss(embeddings, self.proxies, labels, self.alpha, self.delta)

    def flow_parameters(self) -> list[nn.Parameter]:
        """The normalizing flow's weights (the official code trains them at lr x50)."""
        return list(self.flow.parameters())

    def other_parameters(self) -> list[nn.Parameter]:
        return self.flow_parameters()

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "pa_weight": self.pa_weight,
            "alpha": self.alpha,
            "delta": self.delta,
            "objective": self.objective,
            "blocks": self.blocks,
            "hidden": self.hidden,
            "depth": self.depth,
            "clamp": self.clamp,
        }
