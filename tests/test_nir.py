"""NIR: the conditional flow (invertibility, log-determinant, conditioning) and the loss built on it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from proxyembed.losses import NIRLoss, ProxyAnchorLoss, build_loss
from proxyembed.losses.nir import AffineCoupling, ConditionalFlow, mean_exp, soft_clamp
from proxyembed.runtime.errors import BadInput


def _random_flow(dim: int, *, blocks: int = 5, hidden: int = 16, std: float = 0.3, seed: int = 0) -> ConditionalFlow:
    """A float64 flow whose weights are all random (the real init zeroes the last layers: an identity flow)."""
    torch.manual_seed(seed)
    flow = ConditionalFlow(dim, dim, blocks=blocks, hidden=hidden, depth=2, clamp=2.0).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, std)
    return flow


def _unit_batch(b: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, dim, generator=g, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("dim", [2, 7, 16])
def test_flow_is_invertible(dim: int) -> None:
    flow = _random_flow(dim)
    x, cond = _unit_batch(32, dim, 1), _unit_batch(32, dim, 2)
    z, _ = flow(x, cond)
    assert not torch.allclose(z, x)
    assert torch.allclose(flow.inverse(z, cond), x, atol=1e-10)


@pytest.mark.parametrize("dim", [3, 4])
def test_logdet_matches_numerical_jacobian(dim: int) -> None:
    flow = _random_flow(dim, std=0.5)
    x, cond = _unit_batch(5, dim, 3), _unit_batch(5, dim, 4)
    _, logdet = flow(x, cond)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(lambda v, i=i: flow(v[None], cond[i : i + 1])[0][0], x[i])
        sign, logabsdet = torch.linalg.slogdet(jacobian)
        assert sign != 0
        assert logdet[i].item() == pytest.approx(logabsdet.item(), rel=1e-7, abs=1e-9)
    assert logdet.abs().max() > 0.1  # the test exercises non-trivial scales


def test_logdet_is_bounded_by_the_soft_clamp() -> None:
    dim, blocks = 6, 5
    flow = _random_flow(dim, blocks=blocks)
    with torch.no_grad():  # drive every raw log-scale to +-1e4: the soft clamp saturates near +-2
        for coupling in flow.couplings:
            for net in (coupling.net_first, coupling.net_second):
                net[-1].weight.zero_()
                net[-1].bias.fill_(1e4)
    x, cond = _unit_batch(64, dim, 5), _unit_batch(64, dim, 6)
    bound = blocks * dim * 2.0 * 0.636 * math.pi / 2  # each coordinate is scaled once per block
    _, logdet = flow(x, cond)
    assert (logdet < bound).all() and (logdet > 0.99 * bound).all()
    with torch.no_grad():
        for coupling in flow.couplings:
            for net in (coupling.net_first, coupling.net_second):
                net[-1].bias.fill_(-1e4)
    _, logdet = flow(x, cond)
    assert (logdet > -bound).all() and (logdet < -0.99 * bound).all()


def test_fresh_flow_is_a_permutation() -> None:
    loss = NIRLoss(3, 6).double()
    x, cond = _unit_batch(4, 6, 0), _unit_batch(4, 6, 1)
    z, logdet = loss.flow(x, cond)
    assert torch.equal(logdet, torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(z.sort(dim=1).values, x.sort(dim=1).values)


def test_conditioning_changes_the_latent() -> None:
    flow = _random_flow(8)
    x = _unit_batch(1, 8, 0).expand(3, 8)
    z, logdet = flow(x, _unit_batch(3, 8, 1))  # one embedding, three different proxies
    assert (torch.cdist(z, z) + torch.eye(3, dtype=torch.float64) > 1e-3).all()
    assert logdet.unique().numel() == 3


def _with_random_flow(loss: NIRLoss) -> NIRLoss:
    with torch.no_grad():
        for p in loss.flow_parameters():
            p.normal_(0, 0.1)
    return loss


@pytest.mark.parametrize("objective", ["nll", "exp"])
def test_loss_matches_its_formula(objective: str) -> None:
    torch.manual_seed(0)
    loss = _with_random_flow(NIRLoss(4, 5, objective=objective, hidden=16).double())
    x, y = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 4, (10,))
    # Independent pieces: z from the flow, log|det J| from the numerical Jacobian, Proxy-Anchor from its class.
    cond = F.normalize(loss.proxies.detach(), dim=1)[y]
    x_unit = F.normalize(x, dim=1)
    z, _ = loss.flow(x_unit, cond)
    logdet = torch.stack(
        [
            torch.linalg.slogdet(
                torch.autograd.functional.jacobian(lambda v, i=i: loss.flow(v[None], cond[i : i + 1])[0][0], x_unit[i])
            )[1]
            for i in range(10)
        ]
    )
    v = 0.5 * (z**2).sum(dim=1) - logdet
    flow_term = v.mean() if objective == "nll" else v.exp().mean()
    anchor = ProxyAnchorLoss(4, 5).double()
    anchor.load_state_dict({"proxies": loss.proxies.detach()})
    expected = flow_term + 0.0075 * anchor(x, y)
    assert loss(x, y).item() == pytest.approx(expected.item(), rel=1e-9)


def test_gradcheck_wrt_embeddings_and_proxies() -> None:
    torch.manual_seed(0)
    loss = _with_random_flow(NIRLoss(3, 4, hidden=8, blocks=2, alpha=8.0, pa_weight=0.5).double())
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 0])  # class 2 absent
    proxies = loss.proxies.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e, p: functional_call(loss, {"proxies": p}, (e, y)), (x, proxies))


def test_proxies_get_gradient_through_the_condition() -> None:
    torch.manual_seed(0)
    loss = _with_random_flow(NIRLoss(3, 6, hidden=16))
    y = torch.tensor([0, 1, 1, 0])
    loss(torch.randn(4, 6), y).backward()
    with_anchor = loss.proxies.grad.clone()
    loss.zero_grad()
    loss.flow(*loss.flow_inputs(torch.randn(4, 6), y))[1].sum().backward()
    assert loss.proxies.grad[:2].norm(dim=1).min() > 0 and with_anchor[:2].norm(dim=1).min() > 0


@pytest.mark.parametrize("objective", ["nll", "exp"])
def test_loss_decreases_on_a_toy_problem(objective: str) -> None:
    torch.manual_seed(0)
    classes, dim = 3, 4
    loss = NIRLoss(classes, dim, hidden=32, objective=objective, pa_weight=0.1)
    y = torch.arange(classes).repeat_interleave(8)
    embeddings = torch.nn.Parameter(torch.randn(len(y), dim))
    optimizer = torch.optim.Adam([embeddings, *loss.parameters()], lr=1e-2)
    values = []
    for _ in range(60):
        value = loss(embeddings, y)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < values[0] - 0.5


def test_parameter_groups_and_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    loss = _with_random_flow(NIRLoss(3, 6))
    assert loss.proxy_parameters() == [loss.proxies]
    assert loss.other_parameters() == loss.flow_parameters() == list(loss.flow.parameters())
    state = loss.state_dict()
    assert {"proxies", "flow.perm_0", "flow.inv_perm_4"} <= set(state)
    torch.manual_seed(1)
    restored = NIRLoss(3, 6)
    restored.load_state_dict(state)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(restored(x, y), loss(x, y))


def test_nir_parameters_validated() -> None:
    with pytest.raises(BadInput, match="objective"):
        build_loss("nir", 3, 6, objective="log")
    with pytest.raises(BadInput, match="dim >= 2"):
        build_loss("nir", 3, 1)
    with pytest.raises(BadInput, match="blocks"):
        build_loss("nir", 3, 6, blocks=0)


def test_soft_clamp_is_freias_formula() -> None:
    # clamp * 0.636 * atan(s), worked by hand for clamp 2: not the older atan(s / clamp) form
    s = torch.tensor([0.0, 1.0, -3.0, 100.0], dtype=torch.float64)
    expected = [0.0, 2 * 0.636 * math.pi / 4, -2 * 0.636 * 1.2490457723982544, 2 * 0.636 * 1.5607966601082315]
    assert soft_clamp(s, 2.0).tolist() == pytest.approx(expected, rel=1e-12)
    assert soft_clamp(torch.tensor([1.0], dtype=torch.float64), 2.0).item() == pytest.approx(0.99903, abs=1e-5)


def test_coupling_log_det_uses_the_soft_clamp() -> None:
    coupling = AffineCoupling(4, 2, hidden=8, depth=3, clamp=2.0).double()
    raw = torch.tensor([0.5, -1.5], dtype=torch.float64)  # the raw log-scales of the second half
    with torch.no_grad():
        coupling.net_second[-1].bias.copy_(torch.cat([raw, torch.zeros(2, dtype=torch.float64)]))
    x, cond = _unit_batch(3, 4, 0), _unit_batch(3, 2, 1)
    _, logdet = coupling(x, cond)
    expected = (2 * 0.636 * torch.atan(raw)).sum().item()  # the first half's net is still zero: scale 1
    assert logdet.tolist() == pytest.approx([expected] * 3, rel=1e-12)


def test_default_subnets_have_the_official_eight_linear_layers() -> None:
    loss = NIRLoss(3, 6)
    for coupling in loss.flow.couplings:
        for net in (coupling.net_first, coupling.net_second):
            linears = [m for m in net if isinstance(m, torch.nn.Linear)]
            assert len(linears) == 8 and all(m.out_features == 128 for m in linears[:-1])
    assert len(loss.flow.couplings) == 5


def test_exp_objective_does_not_overflow_at_v_90() -> None:
    v = torch.tensor([90.0, 89.0, -5.0, 0.0], requires_grad=True)  # float32, where exp(90) is inf
    assert torch.isinf(v.detach().exp().mean())
    value = mean_exp(v)
    assert value.item() == pytest.approx((math.exp(90) + math.exp(89) + math.exp(-5) + 1) / 4, rel=1e-12)
    value.backward()
    assert torch.isfinite(v.grad).all() and v.grad[0].item() == pytest.approx(math.exp(90) / 4, rel=1e-6)
