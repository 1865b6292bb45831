"""Training-time methods (core/ml/methods.py) vs dense formulas, autograd and hand cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.ml import losses, methods


def _data(n: int = 7, k: int = 5, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    y = torch.randint(0, k, (n,), generator=g)
    return z, y


def dense_margin(z, y, m, lam):
    ce = -F.log_softmax(z, 1)[torch.arange(len(y)), y].mean()
    diff = z.max(dim=1, keepdim=True).values - z
    return ce + lam * torch.clamp(diff - m, min=0).mean()


def dense_focal(z, y, gamma):
    p = torch.softmax(z, 1)[torch.arange(len(y)), y]
    return (-(1 - p) ** gamma * torch.log(p)).mean()


def dense_flsd(z, y, gamma):
    p = torch.softmax(z, 1)[torch.arange(len(y)), y]
    g = [5.0 if q < 0.2 else 3.0 if q < 0.5 else gamma for q in p.tolist()]  # reference loop
    return (-(1 - p) ** torch.tensor(g, dtype=z.dtype) * torch.log(p)).mean()


def dense_cp(z, y, beta):
    p = torch.softmax(z, 1)
    ce = -torch.log(p[torch.arange(len(y)), y])
    h = -(p * torch.log(p)).sum(1)
    return (ce - beta * h).mean()


CASES = [
    (lambda z, y: methods.margin_loss(z, y, margin=2.0, margin_weight=0.3),
     lambda z, y: dense_margin(z, y, 2.0, 0.3)),
    (lambda z, y: methods.margin_loss(z, y), lambda z, y: dense_margin(z, y, 10.0, 0.1)),
    (lambda z, y: methods.focal_loss(z, y, gamma=3.0), lambda z, y: dense_focal(z, y, 3.0)),
    (lambda z, y: methods.focal_loss(z, y, gamma=1.5), lambda z, y: dense_focal(z, y, 1.5)),
    (lambda z, y: methods.adaptive_focal_loss(z, y), lambda z, y: dense_flsd(z, y, 3.0)),
    (lambda z, y: methods.confidence_penalty_loss(z, y, beta=0.1),
     lambda z, y: dense_cp(z, y, 0.1)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])
def test_value_and_gradient_match_dense_formula(case, scale):
    ours, dense = CASES[case]
    z, y = _data(n=40, k=6, seed=case, scale=scale)
    a, b = ours(z, y), dense(z, y)
    ga, = torch.autograd.grad(a, z)
    gb, = torch.autograd.grad(b, z)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_gradcheck_float64(case):
    ours, _ = CASES[case]
    z, y = _data(n=5, k=4, seed=10 + case, scale=2.0)
    if case == 4:  # keep p_t away from FLSD-53's thresholds, where the loss jumps
        with torch.no_grad():
            pt = torch.softmax(z, 1)[torch.arange(5), y]
            assert ((pt - 0.2).abs() > 1e-3).all() and ((pt - 0.5).abs() > 1e-3).all()
    assert torch.autograd.gradcheck(lambda x: ours(x, y), (z,), eps=1e-6, atol=1e-6)


def test_flsd_gammas_follow_the_reference_schedule():
    pt = torch.tensor([0.0, 0.1999, 0.2, 0.4999, 0.5, 0.9, 1.0])
    assert methods.flsd_gammas(pt, 3.0).tolist() == [5, 5, 3, 3, 3, 3, 3]
    assert methods.flsd_gammas(pt, 1.0).tolist() == [5, 5, 3, 3, 1, 1, 1]


def test_hand_cases():
    z = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    p = 1 / (1 + math.exp(-2))
    assert methods.focal_loss(z, y, gamma=2.0).item() == pytest.approx(-(1 - p) ** 2 * math.log(p))
    assert methods.focal_loss(z, y, gamma=0.0).item() == pytest.approx(-math.log(p))
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert methods.confidence_penalty_loss(z, y, beta=0.5).item() == pytest.approx(
        -math.log(p) - 0.5 * h)
    # margin: z = [12, 0, 1], m = 10 -> ReLU(12-0-10) = 2, ReLU(12-1-10) = 1, 0 -> mean 1
    z3 = torch.tensor([[12.0, 0.0, 1.0]], dtype=torch.float64)
    ce = torch.logsumexp(z3, 1).item() - 12.0
    assert methods.margin_loss(z3, torch.tensor([0])).item() == pytest.approx(ce + 0.1 * 1.0)
    # pt = 0.1 < 0.2: FLSD-53 uses gamma 5 whatever the base gamma
    zf = torch.tensor([[0.0, math.log(9.0)]], dtype=torch.float64)
    assert methods.adaptive_focal_loss(zf, torch.tensor([0]), gamma=1.0).item() == pytest.approx(
        -(0.9 ** 5) * math.log(0.1))


def test_reductions_modules_and_reexport():
    z, y = _data()
    rows = methods.focal_loss(z, y, reduction="none")
    assert rows.shape == (7,)
    assert torch.allclose(rows.sum(), methods.focal_loss(z, y, reduction="sum"))
    assert torch.allclose(methods.FocalLoss(gamma=3.0)(z, y), methods.focal_loss(z, y))
    assert torch.allclose(methods.MarginLoss()(z, y), methods.margin_loss(z, y))
    assert torch.allclose(methods.AdaptiveFocalLoss()(z, y), methods.adaptive_focal_loss(z, y))
    assert torch.allclose(methods.ConfidencePenaltyLoss(beta=0.2)(z, y),
                          methods.confidence_penalty_loss(z, y, beta=0.2))
    assert losses.focal_loss is methods.focal_loss  # re-exported from core.ml.losses
    assert torch.allclose(methods.method_loss(z, y, "margin", {"margin": 1.0}),
                          methods.margin_loss(z, y, margin=1.0))


@pytest.mark.parametrize(("call", "message"), [
    (lambda z, y: methods.focal_loss(z, y, gamma=-1.0),
     "Expected argument `gamma` to be a non-negative float, but got -1.0"),
    (lambda z, y: methods.margin_loss(z, y, margin=0.0),
     "Expected argument `margin` to be a positive float, but got 0.0"),
    (lambda z, y: methods.confidence_penalty_loss(z, y, beta=float("nan")),
     "Expected argument `beta` to be a finite float"),
    (lambda z, y: methods.focal_loss(z, y, reduction="avg"),
     "Expected argument `reduction` to be one of"),
    (lambda z, y: methods.focal_loss(z[:, :1], y), "at least 2 classes"),
    (lambda z, y: methods.focal_loss(z, y + 10), "class ids in 0..4"),
    (lambda z, y: methods.method_loss(z, y, "focal", {"beta": 1.0}), "Expected parameters"),
])
def test_argument_errors(call, message):
    z, y = _data()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(z.detach(), y)
    if "gamma" in message:
        with pytest.raises(ValueError, match="gamma"):
            methods.FocalLoss(gamma=-1.0)
