"""Proxy assignment: K proxies per class (Proxy-NCA, ProxyNCA++, Proxy-Anchor) and Proxy-NCA's dynamic
assignment, each against a naive float64 loop, with gradchecks, degenerate batches and checkpoint round trips."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from proxyembed.losses import build_loss
from proxyembed.runtime.errors import BadInput


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def _cos(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(_unit(u), _unit(v), strict=True))


def _dist(u: list[float], p: list[float], scale: float) -> float:
    return sum((scale * a - scale * b) ** 2 for a, b in zip(_unit(u), _unit(p), strict=True))


def _nearest(u: list[float], proxies: list[list[float]], rows: list[int]) -> int:
    return max(rows, key=lambda r: _cos(u, proxies[r]))


def naive_static_nca(x: torch.Tensor, p: torch.Tensor, y: torch.Tensor, k: int, scale: float, with_positive: bool) -> float:
    """Proxy-NCA with K proxies per class: positive = nearest own-class proxy, negatives = other classes' proxies."""
    xs, ps, ys = x.tolist(), p.tolist(), y.tolist()
    total = 0.0
    for xi, yi in zip(xs, ys, strict=True):
        q = _nearest(xi, ps, list(range(yi * k, yi * k + k)))
        negatives = [r for r in range(len(ps)) if r // k != yi] + ([q] if with_positive else [])
        total += _dist(xi, ps[q], scale) + math.log(sum(math.exp(-_dist(xi, ps[r], scale)) for r in negatives))
    return total / len(xs)


def naive_dynamic_nca(x: torch.Tensor, p: torch.Tensor, y: torch.Tensor, scale: float, with_positive: bool) -> float:
    """The dynamic-assignment loss of proxy_nca.py's docstring, one anchor and one positive proxy at a time."""
    xs, ps, ys = x.tolist(), p.tolist(), y.tolist()
    every = list(range(len(ps)))
    chosen = [_nearest(u, ps, every) for u in xs]
    per_anchor = []
    for i, xi in enumerate(xs):
        positives = {chosen[j] for j in range(len(xs)) if j != i and ys[j] == ys[i]}
        negatives = {chosen[j] for j in range(len(xs)) if ys[j] != ys[i]} - positives
        if not positives or not negatives:
            continue
        terms = []
        for q in sorted(positives):
            denominator = [math.exp(-_dist(xi, ps[n], scale)) for n in negatives]
            if with_positive:
                denominator.append(math.exp(-_dist(xi, ps[q], scale)))
            terms.append(_dist(xi, ps[q], scale) + math.log(sum(denominator)))
        per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def naive_multi_proxy_anchor(x: torch.Tensor, p: torch.Tensor, y: torch.Tensor, k: int, alpha: float, delta: float) -> float:
    """Proxy-Anchor with K proxies per class: a sample is a positive of its nearest own-class proxy only."""
    xs, ps, ys = x.tolist(), p.tolist(), y.tolist()
    chosen = [_nearest(u, ps, list(range(c * k, c * k + k))) for u, c in zip(xs, ys, strict=True)]
    pos, neg, with_pos = 0.0, 0.0, 0
    for r, proxy in enumerate(ps):
        s_pos = [math.exp(-alpha * (_cos(u, proxy) - delta)) for u, q in zip(xs, chosen, strict=True) if q == r]
        s_neg = [math.exp(alpha * (_cos(u, proxy) + delta)) for u, c in zip(xs, ys, strict=True) if c != r // k]
        if s_pos:
            pos += math.log(1 + sum(s_pos))
            with_pos += 1
        neg += math.log(1 + sum(s_neg))
    return pos / with_pos + neg / len(ps)


def _batch(seed: int, b: int = 12, dim: int = 5, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, dim, generator=g, dtype=torch.float64), torch.randint(0, classes, (b,), generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("name", "k"), [("proxy_nca", 1), ("proxy_nca", 3), ("proxy_nca++", 3)])
def test_static_k_per_class_matches_naive(seed: int, name: str, k: int) -> None:
    torch.manual_seed(seed)
    loss = build_loss(name, 4, 5, proxies_per_class=k).double()
    assert loss.proxies.shape == (4 * k, 5)
    x, y = _batch(seed)
    expected = naive_static_nca(x, loss.proxies.detach(), y, k, loss.scale, name == "proxy_nca++")
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_proxy_anchor_k_per_class_matches_naive(seed: int, k: int) -> None:
    torch.manual_seed(seed)
    loss = build_loss("proxy_anchor", 4, 5, proxies_per_class=k, alpha=8.0).double()
    x, y = _batch(seed)
    assert loss(x, y).item() == pytest.approx(naive_multi_proxy_anchor(x, loss.proxies.detach(), y, k, 8.0, 0.1), rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("name", "n"), [("proxy_nca", 6), ("proxy_nca", 20), ("proxy_nca++", 6)])
def test_dynamic_matches_naive(seed: int, name: str, n: int) -> None:
    torch.manual_seed(seed)
    loss = build_loss(name, 4, 5, assignment="dynamic", num_proxies=n).double()
    x, y = _batch(seed, b=16)
    expected = naive_dynamic_nca(x, loss.proxies.detach(), y, loss.scale, name == "proxy_nca++")
    assert expected != 0.0  # the batch exercises real anchors
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-10)


def test_dynamic_drops_a_proxy_shared_by_a_positive_and_a_negative() -> None:
    loss = build_loss("proxy_nca", 2, 2, assignment="dynamic", num_proxies=3).double()
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64))
    # samples 0, 1 (class 0) and 2 (class 1) all choose proxy 0; sample 3 (class 1) chooses proxy 1
    x = torch.tensor([[1.0, 0.1], [1.0, -0.1], [1.0, 0.2], [0.1, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    # anchors 0 and 1: positive proxy {0}, negatives {0, 1} minus {0} = {1}; anchor 2: positive {1}, negatives {0};
    # anchor 3: positive {0}, negatives {0} minus {0} = {}: skipped
    value = loss(x, y).item()
    assert value == pytest.approx(naive_dynamic_nca(x, loss.proxies.detach(), y, 1.0, False), rel=1e-12)
    s = loss.scale
    d = lambda u, p: 2 * s**2 * (1 - torch.nn.functional.cosine_similarity(u, p, dim=0).item())  # noqa: E731
    p = loss.proxies.detach()
    by_hand = [d(x[i], p[0]) - d(x[i], p[1]) for i in (0, 1)] + [d(x[2], p[1]) - d(x[2], p[0])]
    assert value == pytest.approx(sum(by_hand) / 3, rel=1e-12)


def test_dynamic_batch_without_usable_anchor_gives_zero_with_a_graph() -> None:
    loss = build_loss("proxy_nca", 2, 3, assignment="dynamic", num_proxies=4)
    lonely = loss(torch.randn(2, 3, requires_grad=True), torch.tensor([0, 1]))  # no anchor has a positive
    assert lonely.item() == 0.0 and lonely.requires_grad
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]]))
    x = torch.tensor([[1.0, 0.1, 0], [1.0, 0, 0.1], [0.9, 0.2, 0.1]], requires_grad=True)  # all choose proxy 0
    value = loss(x, torch.tensor([0, 0, 1]))  # the only negative shares the positives' proxy: nothing to contrast
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all() and torch.isfinite(loss.proxies.grad).all()


@pytest.mark.parametrize(("name", "params"), [
    ("proxy_nca", {"assignment": "dynamic", "num_proxies": 5}),
    ("proxy_nca++", {"assignment": "dynamic", "num_proxies": 5}),
    ("proxy_nca", {"proxies_per_class": 2}),
    ("proxy_anchor", {"proxies_per_class": 2, "alpha": 8.0}),
])
def test_gradcheck(name: str, params: dict[str, object]) -> None:
    torch.manual_seed(0)
    loss = build_loss(name, 3, 3, **params).double().eval()  # eval: no idle-proxy revival between gradcheck's calls
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    proxies = loss.proxies.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e, p: functional_call(loss, {"proxies": p}, (e, y)), (x, proxies))


def test_dynamic_revives_idle_proxies_out_of_a_collapse() -> None:
    """Every sample on one proxy is a zero loss forever; idle proxies move onto the crowded classes' samples."""
    loss = build_loss("proxy_nca", 2, 3, assignment="dynamic", num_proxies=6)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0, 0]] + [[-1.0, 0.1 * i, 0] for i in range(5)]))
    x = torch.tensor([[1.0, 0.1, 0], [1.0, 0, 0.1], [0.9, 0.2, 0.1], [0.9, 0.1, 0.2]])  # all nearest proxy 0
    y = torch.tensor([0, 0, 1, 1])
    patience = 3 * 6 // 2
    values = [loss(x, y).item() for _ in range(patience)]
    assert values == [0.0] * patience  # collapsed: nothing to contrast, and proxies 1..5 idle for `patience` steps
    unchanged = loss.proxies[0].detach().clone()
    revived = loss(x, y)
    assert revived.item() > 0.0  # proxies moved onto one sample of each class: anchors contrast again
    assert torch.equal(loss.proxies[0].detach(), unchanged)  # the proxy still winning stays where it was
    moved = torch.nn.functional.normalize(loss.proxies[1:3].detach(), dim=1)
    assert torch.allclose(moved, torch.nn.functional.normalize(x[[0, 2]], dim=1), atol=1e-6)  # first sample of each class
    loss.eval()
    before = loss.proxies.detach().clone()
    loss.idle_steps.fill_(100)
    loss(x, y)
    assert torch.equal(loss.proxies.detach(), before)  # eval mode never moves proxies


def test_unassigned_proxies_get_no_gradient() -> None:
    torch.manual_seed(0)
    loss = build_loss("proxy_nca", 4, 5, assignment="dynamic", num_proxies=50)
    x, y = _batch(0, b=16)
    loss(x.float(), y).backward()
    with torch.no_grad():
        chosen = set((torch.nn.functional.normalize(x.float(), dim=1) @ torch.nn.functional.normalize(loss.proxies, dim=1).T).argmax(1).tolist())
    moved = set(torch.nonzero(loss.proxies.grad.norm(dim=1) > 0).flatten().tolist())
    assert moved and moved <= chosen and len(chosen) < 50


@pytest.mark.parametrize(("name", "params"), [
    ("proxy_nca", {"assignment": "dynamic", "num_proxies": 7}),
    ("proxy_nca++", {"proxies_per_class": 3}),
    ("proxy_anchor", {"proxies_per_class": 2}),
])
def test_hyperparameters_rebuild_the_same_proxies(name: str, params: dict[str, object]) -> None:
    loss = build_loss(name, 5, 8, **params)
    rebuilt = build_loss(name, 5, 8, **loss.hyperparameters())
    rebuilt.load_state_dict(loss.state_dict())
    x, y = _batch(4, b=10, dim=8, classes=5)
    assert torch.equal(rebuilt(x.float(), y), loss(x.float(), y))


@pytest.mark.parametrize("params", [
    {"assignment": "dynamic"},
    {"assignment": "dynamic", "num_proxies": 4, "proxies_per_class": 2},
    {"num_proxies": 4},
    {"assignment": "nearest"},
    {"assignment": "dynamic", "num_proxies": 1},
    {"proxies_per_class": 0},
])
def test_bad_assignment_parameters(params: dict[str, object]) -> None:
    with pytest.raises(BadInput):
        build_loss("proxy_nca", 5, 8, **params)
