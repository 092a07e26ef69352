"""Losses against naive float64 references, hand-worked toy values, gradchecks, the registry and input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from proxyembed.losses import (
    LOSSES,
    MetricLoss,
    ProxyAnchorLoss,
    ProxyNCALoss,
    ProxyNCAPlusPlusLoss,
    TripletLoss,
    build_loss,
)
from proxyembed.losses.triplet import semihard_triplets
from proxyembed.runtime.errors import BadInput

# ---------------------------------------------------------------- naive references (python floats, explicit sums)


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def _cos(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(_unit(u), _unit(v), strict=True))


def naive_proxy_anchor(x: torch.Tensor, p: torch.Tensor, y: torch.Tensor, alpha: float, delta: float) -> float:
    xs, ps, ys = x.tolist(), p.tolist(), y.tolist()
    pos, neg, n_pos = 0.0, 0.0, 0
    for c, proxy in enumerate(ps):
        s_pos = [math.exp(-alpha * (_cos(xi, proxy) - delta)) for xi, yi in zip(xs, ys, strict=True) if yi == c]
        s_neg = [math.exp(alpha * (_cos(xi, proxy) + delta)) for xi, yi in zip(xs, ys, strict=True) if yi != c]
        if s_pos:
            pos += math.log(1 + sum(s_pos))
            n_pos += 1
        neg += math.log(1 + sum(s_neg))
    return pos / n_pos + neg / len(ps)


def naive_proxy_nca(x: torch.Tensor, p: torch.Tensor, y: torch.Tensor, scale: float, with_positive: bool) -> float:
    xs, ps, ys = x.tolist(), p.tolist(), y.tolist()
    total = 0.0
    for xi, yi in zip(xs, ys, strict=True):
        xu = [scale * a for a in _unit(xi)]
        dist = [sum((a - scale * b) ** 2 for a, b in zip(xu, _unit(pc), strict=True)) for pc in ps]
        denominator = sum(math.exp(-d) for c, d in enumerate(dist) if with_positive or c != yi)
        total += -math.log(math.exp(-dist[yi]) / denominator)
    return total / len(xs)


def naive_semihard_triplet(x: torch.Tensor, y: torch.Tensor, margin: float) -> tuple[float, list[tuple[int, int, int]]]:
    xs, ys = x.tolist(), y.tolist()
    b = len(xs)

    def d(i: int, j: int) -> float:
        return 1 - _cos(xs[i], xs[j])

    chosen = []
    for a in range(b):
        for p in range(b):
            if p == a or ys[p] != ys[a]:
                continue
            semihard = [n for n in range(b) if ys[n] != ys[a] and d(a, p) < d(a, n) < d(a, p) + margin]
            if semihard:
                chosen.append((a, p, min(semihard, key=lambda n: d(a, n))))
    if not chosen:
        return 0.0, []
    return sum(d(a, p) - d(a, n) + margin for a, p, n in chosen) / len(chosen), chosen


def _batch(seed: int, b: int = 12, dim: int = 5, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, dim, generator=g, dtype=torch.float64), torch.randint(0, classes, (b,), generator=g)


def _set_proxies(loss: MetricLoss, proxies: list[list[float]]) -> None:
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor(proxies, dtype=loss.proxies.dtype))


# ---------------------------------------------------------------- Proxy-Anchor


def test_proxy_anchor_hand_worked_2d() -> None:
    # Proxies p0=(1,0), p1=(0,1), p2=(-1,0); batch x_a=(1,0) of class 0, x_b=(0,1) of class 1 (class 2 absent).
    # cos(x_a, p.) = [1, 0, -1], cos(x_b, p.) = [0, 1, 0]; alpha=2, delta=0.5 for round exponents.
    # Positive term, P+ = {p0, p1}: p0: log(1 + e^{-2(1-0.5)}) = log(1 + e^-1), p1 the same -> mean log(1 + e^-1).
    # Negative term, all 3 proxies: p0: x_b, log(1 + e^{2(0+0.5)}) = log(1 + e); p1: x_a, log(1 + e);
    #   p2: x_a and x_b, log(1 + e^{2(-1+0.5)} + e^{2(0+0.5)}) = log(1 + e^-1 + e) -> sum / 3.
    # Total = 0.313262 + (2 * 1.313262 + 1.407587) / 3 = 1.657971.
    loss = ProxyAnchorLoss(3, 2, alpha=2.0, delta=0.5).double()
    _set_proxies(loss, [[1, 0], [0, 1], [-1, 0]])
    value = loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), torch.tensor([0, 1]))
    e = math.e
    assert value.item() == pytest.approx(math.log(1 + 1 / e) + (2 * math.log(1 + e) + math.log(1 + e + 1 / e)) / 3)
    assert value.item() == pytest.approx(1.657971, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("alpha", "delta"), [(32.0, 0.1), (4.0, 0.3)])
def test_proxy_anchor_matches_naive(seed: int, alpha: float, delta: float) -> None:
    x, y = _batch(seed, classes=6)  # 12 samples over 6 classes: some classes usually absent
    loss = ProxyAnchorLoss(6, 5, alpha=alpha, delta=delta).double()
    expected = naive_proxy_anchor(x, loss.proxies.detach(), y, alpha, delta)
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-10)


def test_proxy_anchor_absent_class_gets_only_negative_gradient() -> None:
    x, y = _batch(0, classes=3)  # labels in {0, 1, 2}; proxies 3..5 are never present
    loss = ProxyAnchorLoss(6, 5).double()
    loss(x, y).backward()
    proxies = loss.proxies.detach().clone().requires_grad_(True)
    # The negative term alone, (1/|P|) sum_p log(1 + sum_{x in X-_p} exp(alpha (s + delta))), by hand.
    cos = F.normalize(x, dim=1) @ F.normalize(proxies, dim=1).T
    negative = F.one_hot(y, 6) == 0
    terms = [torch.log(1 + torch.exp(32 * (cos[negative[:, c], c] + 0.1)).sum()) for c in range(6)]
    (sum(terms) / 6).backward()
    absent = torch.arange(3, 6)
    assert torch.allclose(loss.proxies.grad[absent], proxies.grad[absent], rtol=1e-10, atol=1e-14)
    assert (loss.proxies.grad[absent].norm(dim=1) > 0).all()  # absent classes still act as negatives


@pytest.mark.parametrize("alpha", [32.0, 1000.0])
@pytest.mark.parametrize(
    "case", ["at_proxy", "opposite_proxy", "huge_norm", "tiny_norm", "zeros", "single_sample", "one_class"]
)
def test_proxy_anchor_finite_on_extreme_batches(case: str, alpha: float) -> None:
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(4, 8, alpha=alpha)
    p = F.normalize(loss.proxies.detach(), dim=1)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    x = {
        "at_proxy": p[y],
        "opposite_proxy": -p[y],
        "huge_norm": p[y] * 1e18,
        "tiny_norm": p[y] * 1e-30,
        "zeros": torch.zeros(6, 8),
        "single_sample": -p[:1],
        "one_class": -p[torch.zeros(6, dtype=torch.long)],
    }[case].clone()
    if case == "single_sample":
        y = y[:1]
    elif case == "one_class":
        y = torch.zeros(6, dtype=torch.long)
    x.requires_grad_(True)
    value = loss(x, y)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss.proxies.grad).all()


def test_proxy_init_is_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    proxies = ProxyAnchorLoss(2000, 64).proxies.detach()
    assert proxies.std().item() == pytest.approx(math.sqrt(2 / 2000), rel=0.02)  # fan_out = num_classes


# ---------------------------------------------------------------- Proxy-NCA and ProxyNCA++


def test_proxy_nca_hand_worked_2d() -> None:
    # Proxies p0=(1,0), p1=(0,1), p2=(-1,0); one sample x=(1,0) of class 0.
    # d = ||s x - s p||^2 = 2 s^2 (1 - cos): with s=1, d = [0, 2, 4].
    # Paper form: 0 + log(e^-2 + e^-4) = -2 + log(1 + e^-2) = -1.873072 (negative: positive not in the denominator).
    # ++ form with s=1: log(e^0 + e^-2 + e^-4) = 0.142932; with s=3, d = [0, 18, 36]: log(1 + e^-18 + e^-36) = 1.523e-8.
    x, y = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0])
    proxies = [[1, 0], [0, 1], [-1, 0]]
    paper = ProxyNCALoss(3, 2).double()
    plus = ProxyNCAPlusPlusLoss(3, 2, scale=1.0).double()
    plus3 = ProxyNCAPlusPlusLoss(3, 2).double()
    for loss in (paper, plus, plus3):
        _set_proxies(loss, proxies)
    assert paper(x, y).item() == pytest.approx(-1.873072, abs=1e-6)
    assert plus(x, y).item() == pytest.approx(0.142932, abs=1e-6)
    assert plus3(x, y).item() == pytest.approx(1.523e-8, rel=1e-3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("cls", "scale"), [(ProxyNCALoss, 1.0), (ProxyNCAPlusPlusLoss, 3.0), (ProxyNCALoss, 2.5)])
def test_proxy_nca_matches_naive(seed: int, cls: type[ProxyNCALoss], scale: float) -> None:
    x, y = _batch(seed, classes=6)
    loss = cls(6, 5, scale=scale).double()
    expected = naive_proxy_nca(x, loss.proxies.detach(), y, scale, with_positive=cls.include_positive)
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-10)


def test_proxy_nca_paper_form_can_be_negative_plus_plus_never() -> None:
    torch.manual_seed(0)
    paper, plus = ProxyNCALoss(5, 8).double(), ProxyNCAPlusPlusLoss(5, 8).double()
    plus.load_state_dict(paper.state_dict())
    y = torch.arange(5)
    at_proxies = paper.proxies.detach().clone()
    assert paper(at_proxies, y).item() < 0
    assert plus(at_proxies, y).item() >= 0
    for seed in range(20):
        x, y = _batch(seed, dim=8, classes=5)
        assert plus(x, y).item() >= 0


def test_proxy_nca_paper_form_needs_two_classes() -> None:
    with pytest.raises(BadInput, match="at least 2 classes"):
        ProxyNCALoss(1, 4)
    assert ProxyNCAPlusPlusLoss(1, 4)(torch.randn(3, 4), torch.zeros(3, dtype=torch.long)).item() == 0.0


# ---------------------------------------------------------------- triplet


def _at_degrees(*angles: float) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles], dtype=torch.float64)


def test_triplet_semihard_selection_on_constructed_batch() -> None:
    # Anchor at 0 deg and positive at 30 deg (class 0): d(a, p) = 1 - cos 30 = 0.134, so with margin 0.2 the
    # semi-hard window is d in (0.134, 0.334), i.e. angles in (30, 48.2) deg. Negatives (one class each):
    # 20 deg hard (d=0.060), 40 deg semi-hard (0.234), 45 deg semi-hard (0.293), 90 deg easy (1.0).
    # Anchor 0 takes the closest semi-hard one, index 3 (40 deg). Anchor 1 (30 deg) to positive 0 has
    # d=0.134 but its negatives lie at 10, 10, 15 (all closer: hard) and 60 deg (0.5: easy): no triplet.
    # Loss = cos 40 - cos 30 + 0.2 = 0.100019.
    x = _at_degrees(0, 30, 20, 40, 45, 90)
    y = torch.tensor([0, 0, 1, 2, 3, 4])
    distances = 1 - F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    assert semihard_triplets(distances, y, 0.2).tolist() == [[0, 1, 3]]
    value, chosen = naive_semihard_triplet(x, y, 0.2)
    assert chosen == [(0, 1, 3)]
    assert TripletLoss(5, 2)(x, y).item() == pytest.approx(0.100019, abs=1e-6) == value


@pytest.mark.parametrize("seed", range(6))
def test_triplet_matches_naive(seed: int) -> None:
    x, y = _batch(seed, b=16, dim=3, classes=4)
    expected, chosen = naive_semihard_triplet(x, y, 0.2)
    assert chosen, "the random batch should contain semi-hard triplets"
    assert TripletLoss(4, 3)(x, y).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [2, 2, 2, 2]], ids=["all_distinct", "one_class"])
def test_triplet_no_valid_triplet_is_zero_with_grad(labels: list[int]) -> None:
    x = torch.randn(4, 3, requires_grad=True)
    value = TripletLoss(4, 3)(x, torch.tensor(labels))
    assert value.item() == 0.0 and value.grad_fn is not None
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["proxy_anchor", "proxy_nca", "proxy_nca++"])
def test_proxy_loss_gradcheck(name: str) -> None:
    torch.manual_seed(0)
    loss = build_loss(name, 4, 3, **({"alpha": 8.0} if name == "proxy_anchor" else {})).double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 0])  # class 3 absent
    proxies = loss.proxies.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e, p: functional_call(loss, {"proxies": p}, (e, y)), (x, proxies))


def test_triplet_gradcheck() -> None:
    x, y = _batch(1, b=10, dim=3, classes=3)
    assert torch.autograd.gradcheck(lambda e: TripletLoss(3, 3)(e, y), (x.requires_grad_(True),))


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_half_precision_and_autocast_compute_in_float32(name: str) -> None:
    torch.manual_seed(0)
    loss = build_loss(name, 4, 8)
    x, y = F.normalize(torch.randn(16, 8), dim=1), torch.randint(0, 4, (16,))
    reference = loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss(x, y)
    from_bf16 = loss(x.bfloat16(), y)
    # NIR's exp objective sums exp(v) in float64 on purpose (finite past v ~ 88, see nir.mean_exp)
    assert under_autocast.dtype == from_bf16.dtype == (torch.float64 if name == "nir" else torch.float32)
    assert under_autocast.item() == pytest.approx(reference.item(), rel=1e-5)
    assert from_bf16.item() == pytest.approx(reference.item(), rel=0.1, abs=0.02)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registry_builds_each_loss(name: str) -> None:
    loss = build_loss(name, 5, 8)
    assert isinstance(loss, MetricLoss) and loss.name == name
    rebuilt = build_loss(name, 5, 8, **loss.hyperparameters())
    assert rebuilt.hyperparameters() == loss.hyperparameters()
    assert loss.uses_proxies == bool(loss.proxy_parameters())
    if loss.uses_proxies:
        assert tuple(loss.state_dict()["proxies"].shape) == (5, 8)
    owned = {id(p) for p in loss.proxy_parameters() + loss.other_parameters()}
    assert owned == {id(p) for p in loss.parameters()}
    assert len(owned) == len(loss.proxy_parameters()) + len(loss.other_parameters())


def test_registry_unknown_name_lists_valid_names() -> None:
    with pytest.raises(BadInput) as err:
        build_loss("arcface", 5, 8)
    assert "arcface" in err.value.message
    assert all(name in err.value.message for name in LOSSES)


def test_registry_unknown_param_lists_valid_params() -> None:
    with pytest.raises(BadInput) as err:
        build_loss("proxy_anchor", 5, 8, margin=0.1)
    assert "margin" in err.value.message and "alpha" in err.value.message and "delta" in err.value.message


@pytest.mark.parametrize(
    ("name", "params"),
    [("proxy_anchor", {"alpha": -1}), ("proxy_anchor", {"delta": 1.5}), ("triplet", {"margin": "0.2"}),
     ("proxy_nca++", {"scale": 0})],
)
def test_registry_bad_param_value(name: str, params: dict[str, object]) -> None:
    with pytest.raises(BadInput, match=next(iter(params))):
        build_loss(name, 5, 8, **params)


@pytest.mark.parametrize(("num_classes", "dim"), [(0, 8), (5, 0)])
def test_bad_sizes_rejected(num_classes: int, dim: int) -> None:
    with pytest.raises(BadInput):
        build_loss("proxy_anchor", num_classes, dim)


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize(
    ("embeddings", "labels", "message"),
    [
        (torch.randn(4, 7), torch.tensor([0, 1, 2, 3]), r"shape \(batch, 8\), got \(4, 7\)"),
        (torch.randn(8), torch.tensor([0, 1, 2, 3]), r"shape \(batch, 8\)"),
        (torch.randn(4, 8), torch.tensor([0, 1, 2]), r"labels must have shape \(4,\)"),
        (torch.randn(4, 8), torch.tensor([[0], [1], [2], [3]]), r"labels must have shape \(4,\)"),
        (torch.randn(4, 8), torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer tensor"),
        (torch.randn(4, 8), torch.tensor([0, 1, 2, 5]), r"in \[0, 5\), got values in \[0, 5\]"),
        (torch.randn(4, 8), torch.tensor([-1, 1, 2, 3]), r"in \[0, 5\), got values in \[-1, 3\]"),
        (torch.ones(4, 8, dtype=torch.long), torch.tensor([0, 1, 2, 3]), "floating point"),
        (torch.randn(0, 8), torch.zeros(0, dtype=torch.long), "empty"),
    ],
)
def test_bad_input_raises_value_error(name: str, embeddings: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_loss(name, 5, 8)(embeddings, labels)
