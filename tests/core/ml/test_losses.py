"""Tests for core.ml.losses against independent oracles (torch, dense formulas, hand values)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.ml import losses
from core.ml.losses import (
    FORMS,
    REDUCTIONS,
    VARIANTS,
    LabelSmoothingCrossEntropy,
    label_smoothed_cross_entropy,
    soft_targets,
)


@pytest.fixture(autouse=True, params=["auto", "fused"])
def loss_path(request, monkeypatch):
    """Every test runs twice: as shipped (small plain batches take torch's kernels) and with
    the fused kernel forced at every size."""
    if request.param == "fused":
        monkeypatch.setattr(losses, "TORCH_DISPATCH_MAX_ELEMS", 0)
    return request.param


SMALL_PATH_NODES = ("DotBackward0", "SumBackward1")  # core.ml.small_ce: mean/sum, none
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


def _data(n: int, k: int, dtype: torch.dtype = torch.float64, seed: int = 0, ignore: bool = False):
    gen = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(n, k, generator=gen)).to(dtype)
    y = torch.randint(0, k, (n,), generator=gen)
    if ignore:
        y[::4] = -100
    return z, y


def _close_grad(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Gradients: relative tolerance of the dtype, absolute one scaled to the gradient's size.

    Two float32 computations each within rtol * scale of the truth may differ by twice that
    (how far each lands depends on the CPU's vectorised exp/log: AVX2 vs AVX-512).
    """
    tol = TOL[ref.dtype]
    scale = max(float(ref.abs().max()), 1e-30) * (2 if ref.dtype == torch.float32 else 1)
    torch.testing.assert_close(ours, ref, rtol=tol["rtol"], atol=tol["rtol"] * scale)


def _value_and_grad(fn, z: torch.Tensor, grad_out: torch.Tensor | None = None):
    z = z.detach().clone().requires_grad_()
    loss = fn(z)
    loss.backward(torch.ones_like(loss) if grad_out is None else grad_out)
    return loss.detach(), z.grad


def _dense_ce(z: torch.Tensor, q: torch.Tensor, y: torch.Tensor, weight=None, reduction="mean"):
    """-sum_k w_k q_k log softmax(z)_k written out, torch's denominator for 'mean'."""
    keep = y != -100
    w = torch.ones(z.shape[1], dtype=z.dtype) if weight is None else weight.to(z.dtype)
    rows = -(w * q * torch.log_softmax(z, dim=1)).sum(1) * keep
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / (w[y.clamp(min=0)] * keep).sum()


def _dense_q(y: torch.Tensor, k: int, alpha: float, variant: str, prior=None) -> torch.Tensor:
    """Soft targets built directly from the definitions (not via soft_targets)."""
    onehot = F.one_hot(y.clamp(min=0), k).double()
    if variant == "uniform":
        return (1 - alpha) * onehot + alpha / k
    if variant == "off_target":
        return (1 - alpha) * onehot + alpha / (k - 1) * (1 - onehot)
    return (1 - alpha) * onehot + alpha * prior.double()


# ----------------------------------------------------------------------------- uniform == torch


def test_reference_value():
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    loss = label_smoothed_cross_entropy(z, torch.tensor([0]), 0.1)
    assert loss.item() == pytest.approx(0.7244379, abs=1e-6)


@pytest.mark.parametrize("n,k", [(7, 2), (33, 5), (64, 10), (40, 17), (19, 100), (5, 1000),
                                 (3, 32000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_uniform_matches_torch(n, k, dtype, alpha):
    z, y = _data(n, k, dtype, seed=k)
    ours = _value_and_grad(lambda t: label_smoothed_cross_entropy(t, y, alpha), z)
    ref = _value_and_grad(lambda t: F.cross_entropy(t, y, label_smoothing=alpha), z)
    torch.testing.assert_close(ours[0], ref[0], **TOL[dtype])
    _close_grad(ours[1], ref[1])
    if dtype == torch.float32:  # and at least as close as torch to the float64 truth
        exact = _value_and_grad(lambda t: F.cross_entropy(t, y, label_smoothing=alpha), z.double())
        err = (ours[1].double() - exact[1]).abs().max()
        assert err <= (ref[1].double() - exact[1]).abs().max() + 1e-7


@pytest.mark.parametrize("k", [3, 12, 50])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_matches_torch_weight_ignore_reduction(k, reduction, weighted, dtype):
    z, y = _data(41, k, dtype, seed=3, ignore=True)
    w = torch.rand(k, generator=torch.Generator().manual_seed(1)).to(dtype) + 0.1
    w = w if weighted else None
    go = torch.rand(41, dtype=dtype) if reduction == "none" else None
    ours = _value_and_grad(lambda t: label_smoothed_cross_entropy(
        t, y, 0.2, weight=w, reduction=reduction), z, go)
    ref = _value_and_grad(lambda t: F.cross_entropy(
        t, y, weight=w, label_smoothing=0.2, reduction=reduction), z, go)
    torch.testing.assert_close(ours[0], ref[0], **TOL[dtype])
    _close_grad(ours[1], ref[1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("variant", ["uniform", "off_target"])
def test_small_cpu_batches_take_one_node_equal_to_torch(reduction, variant):
    z, y = _data(64, 10, torch.float32, seed=8)
    go = torch.rand(64) if reduction == "none" else torch.tensor(1.7)
    fn = lambda t: label_smoothed_cross_entropy(t, y, 0.2, variant, reduction=reduction)  # noqa: E731
    eps = 0.2 if variant == "uniform" else 0.2 * 10 / 9
    ref = lambda t: F.cross_entropy(t, y, label_smoothing=eps, reduction=reduction)  # noqa: E731
    ours, theirs = _value_and_grad(fn, z, go), _value_and_grad(ref, z, go)
    torch.testing.assert_close(ours[0], theirs[0], **TOL[torch.float32])
    _close_grad(ours[1], theirs[1])
    if losses.TORCH_DISPATCH_MAX_ELEMS:  # "auto": the small path, a dot product (or row sums)
        assert fn(z.requires_grad_()).grad_fn.name() in SMALL_PATH_NODES
    # a class index outside [0, K) still gets the full path's explanation
    with pytest.raises(ValueError, match="target"):
        label_smoothed_cross_entropy(z, torch.full((64,), 10), 0.2, variant)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_path_matches_torch_with_extreme_logits_and_a_second_backward(reduction, dtype):
    z, y = _data(256, 100, dtype, seed=9)
    z = z * 60.0  # logit gaps of hundreds: softmax(z)_y is exactly 0 for many rows
    assert (torch.softmax(z, 1).gather(1, y.unsqueeze(1)) == 0).any()
    go = torch.rand(256, dtype=dtype) if reduction == "none" else torch.tensor(0.7, dtype=dtype)
    fn = lambda t: label_smoothed_cross_entropy(t, y, 0.15, reduction=reduction)  # noqa: E731
    ref = lambda t: F.cross_entropy(t, y, label_smoothing=0.15, reduction=reduction)  # noqa: E731
    ours, theirs = _value_and_grad(fn, z, go), _value_and_grad(ref, z, go)
    assert torch.isfinite(ours[0]).all()
    torch.testing.assert_close(ours[0], theirs[0], **TOL[dtype])
    _close_grad(ours[1], theirs[1])
    if losses.TORCH_DISPATCH_MAX_ELEMS:
        assert fn(z.requires_grad_()).grad_fn.name() in SMALL_PATH_NODES
    loss = fn(z.requires_grad_()).sum()
    (g1,) = torch.autograd.grad(loss, z, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(g2, g1)


@pytest.mark.parametrize("spread", [1.0, 2000.0])  # one shift for all rows / each row's own
@pytest.mark.parametrize("k", [4, 10, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_of_very_different_scales_per_row_match_torch(spread, k, dtype):
    z, y = _data(300, k, dtype, seed=11)
    z = z + torch.linspace(-spread, spread, 300, dtype=dtype).unsqueeze(1)  # row offsets
    w = torch.linspace(0.5, 2.0, k, dtype=dtype)
    for weight in (None, w):
        ours = _value_and_grad(lambda t, w_=weight: label_smoothed_cross_entropy(
            t, y, 0.2, weight=w_), z)
        ref = _value_and_grad(lambda t, w_=weight: F.cross_entropy(
            t, y, weight=w_, label_smoothing=0.2), z)
        torch.testing.assert_close(ours[0], ref[0], **TOL[dtype])
        _close_grad(ours[1], ref[1])


def test_uniform_custom_ignore_index_and_scaled_grad_output():
    z, y = _data(20, 7, seed=5)
    y[3] = 6
    fn = lambda t: label_smoothed_cross_entropy(t, y, 0.3, ignore_index=6)  # noqa: E731
    ref = lambda t: F.cross_entropy(t, y, label_smoothing=0.3, ignore_index=6)  # noqa: E731
    go = torch.tensor(2.5, dtype=torch.float64)
    ours, ref_ = _value_and_grad(fn, z, go), _value_and_grad(ref, z, go)
    torch.testing.assert_close(ours[0], ref_[0])
    torch.testing.assert_close(ours[1], ref_[1])
    assert torch.all(ours[1][y == 6] == 0)


def test_spatial_logits_match_torch():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(3, 5, 4, 2, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (3, 4, 2), generator=gen)
    for reduction in REDUCTIONS:
        ours = _value_and_grad(lambda t, r=reduction: label_smoothed_cross_entropy(
            t, y, 0.1, reduction=r), z, torch.ones(3, 4, 2, dtype=torch.float64)
            if reduction == "none" else None)
        ref = _value_and_grad(lambda t, r=reduction: F.cross_entropy(
            t, y, label_smoothing=0.1, reduction=r), z, torch.ones(3, 4, 2, dtype=torch.float64)
            if reduction == "none" else None)
        torch.testing.assert_close(ours[0], ref[0])
        torch.testing.assert_close(ours[1], ref[1])


def test_no_grad_path_matches():
    z, y = _data(30, 9, torch.float32, ignore=True)
    with torch.no_grad():
        a = label_smoothed_cross_entropy(z, y, 0.1, weight=torch.ones(9))
    torch.testing.assert_close(a, F.cross_entropy(z, y, label_smoothing=0.1), **TOL[torch.float32])


def test_retain_graph_second_backward_is_identical():
    z, y = _data(12, 40, seed=8)
    z.requires_grad_()
    loss = label_smoothed_cross_entropy(z, y, 0.1)
    (g1,) = torch.autograd.grad(loss, z, retain_graph=True)
    g1 = g1.clone()
    (g2,) = torch.autograd.grad(loss, z, grad_outputs=torch.tensor(3.0, dtype=torch.float64))
    torch.testing.assert_close(g2, 3 * g1)


# ----------------------------------------------------------------------------- other variants


@pytest.mark.parametrize("variant", ["off_target", "prior", "uniform"])
@pytest.mark.parametrize("k", [4, 40])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_categorical_variants_against_dense_formula(variant, k, weighted, reduction):
    z, y = _data(23, k, seed=k + 1, ignore=True)
    gen = torch.Generator().manual_seed(4)
    prior = torch.rand(k, generator=gen, dtype=torch.float64)
    prior = prior / prior.sum() if variant == "prior" else None
    w = torch.rand(k, generator=gen, dtype=torch.float64) + 0.2 if weighted else None
    q = _dense_q(y, k, 0.3, variant, prior)
    go = torch.rand(23, dtype=torch.float64) if reduction == "none" else None
    ours = _value_and_grad(lambda t: label_smoothed_cross_entropy(
        t, y, 0.3, variant, prior=prior, weight=w, reduction=reduction), z, go)
    ref = _value_and_grad(lambda t: _dense_ce(t, q, y, w, reduction), z, go)
    torch.testing.assert_close(ours[0], ref[0], **TOL[torch.float64])
    torch.testing.assert_close(ours[1], ref[1], **TOL[torch.float64])


@pytest.mark.parametrize("variant", ["uniform", "off_target", "prior"])
@pytest.mark.parametrize("weighted", [False, True])
def test_kl_is_ce_minus_entropy(variant, weighted):
    k = 6
    z, y = _data(15, k, seed=11, ignore=True)
    prior = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1, 0.0], dtype=torch.float64)
    prior = prior if variant == "prior" else None
    w = torch.linspace(0.5, 2.0, k, dtype=torch.float64) if weighted else None
    q = _dense_q(y, k, 0.2, variant, prior)
    ws = torch.ones(k, dtype=torch.float64) if w is None else w
    entropy = -(ws * torch.special.xlogy(q, q)).sum(1) * (y != -100)
    kw = {"prior": prior, "weight": w, "reduction": "none"}
    ce = _value_and_grad(lambda t: label_smoothed_cross_entropy(t, y, 0.2, variant, **kw), z)
    kl = _value_and_grad(
        lambda t: label_smoothed_cross_entropy(t, y, 0.2, variant, form="kl", **kw), z)
    torch.testing.assert_close(kl[0], ce[0] - entropy)
    torch.testing.assert_close(kl[1], ce[1])
    kl_direct = (ws * q * (torch.log(q.clamp_min(1e-300)) - torch.log_softmax(z, 1))).sum(1)
    torch.testing.assert_close(kl[0], kl_direct * (y != -100))


def _binary_by_hand(z, y, alpha, weight=None):
    t = y.double() * (1 - alpha) + alpha / 2
    p = 1 / (1 + torch.exp(-z))
    w1, w0 = (1.0, 1.0) if weight is None else (weight[1], weight[0])
    return -(w1 * t * torch.log(p) + w0 * (1 - t) * torch.log(1 - p))


@pytest.mark.parametrize("shape", [(17,), (17, 1)])
def test_binary_against_formula_and_torch(shape):
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(17, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (17,), generator=gen)
    ours = _value_and_grad(
        lambda t: label_smoothed_cross_entropy(t.reshape(shape), y.reshape(shape), 0.2,
                                               "binary"), z)
    hand = _value_and_grad(lambda t: _binary_by_hand(t, y, 0.2).mean(), z)
    bce = _value_and_grad(lambda t: F.binary_cross_entropy_with_logits(
        t, y.double() * 0.8 + 0.1), z)
    for ref in (hand, bce):
        torch.testing.assert_close(ours[0], ref[0])
        torch.testing.assert_close(ours[1], ref[1])
    # t for alpha = 0.2: 0.9 / 0.1; worked example for one logit
    one = label_smoothed_cross_entropy(torch.tensor([0.0]), torch.tensor([1]), 0.2, "binary")
    assert one.item() == pytest.approx(math.log(2), abs=1e-6)


def test_binary_weight_ignore_kl_reduction():
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (12,), generator=gen)
    y[::3] = -100
    w = torch.tensor([0.5, 2.0], dtype=torch.float64)
    keep = y != -100
    yk = y.clamp(min=0)
    rows = _binary_by_hand(z, yk, 0.1, w) * keep
    out = label_smoothed_cross_entropy(z, y, 0.1, "binary", weight=w, reduction="none")
    torch.testing.assert_close(out, rows)
    mean = label_smoothed_cross_entropy(z, y, 0.1, "binary", weight=w)
    torch.testing.assert_close(mean, rows.sum() / (w[yk] * keep).sum())
    t = yk.double() * 0.9 + 0.05
    ent = -(w[1] * torch.special.xlogy(t, t) + w[0] * torch.special.xlogy(1 - t, 1 - t)) * keep
    kl = label_smoothed_cross_entropy(z, y, 0.1, "binary", weight=w, form="kl", reduction="sum")
    torch.testing.assert_close(kl, (rows - ent).sum())
    yf = y.double()
    torch.testing.assert_close(
        label_smoothed_cross_entropy(z, yf, 0.1, "binary", weight=w, reduction="sum"), rows.sum())


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("form", FORMS)
def test_gradcheck(variant, form):
    gen = torch.Generator().manual_seed(9)
    if variant == "binary":
        z = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
        y = torch.tensor([0, 1, 1, -100, 0, 1])
        w = torch.tensor([0.7, 1.3], dtype=torch.float64)
        prior = None
    else:
        k = 5 if variant != "off_target" else 16  # 16 >= _SMALL_K: the row-wise kernel
        z = torch.randn(6, k, generator=gen, dtype=torch.float64, requires_grad=True)
        y = torch.tensor([0, 1, k - 1, -100, 2, 3])
        w = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5
        prior = torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), 0)
        prior = prior if variant == "prior" else None
    for reduction in REDUCTIONS:
        for weight in (None, w):
            def fn(t, r=reduction, wt=weight):
                return label_smoothed_cross_entropy(t, y, 0.25, variant, prior=prior,
                                                    form=form, weight=wt, reduction=r)
            assert torch.autograd.gradcheck(fn, (z,))


# ----------------------------------------------------------------------------- seeds' examples


def test_soft_targets_example():
    q = soft_targets(torch.tensor([2]), 5, 0.1)
    torch.testing.assert_close(q[0], torch.tensor([0.02, 0.02, 0.92, 0.02, 0.02],
                                                  dtype=torch.float64))
    off = soft_targets(torch.tensor([0, 2]), 3, 0.3, "off_target")
    torch.testing.assert_close(off, torch.tensor([[0.7, 0.15, 0.15], [0.15, 0.15, 0.7]],
                                                 dtype=torch.float64))
    prior = torch.tensor([0.5, 0.25, 0.25])
    pq = soft_targets(torch.tensor([1]), 3, 0.2, "prior", prior=prior)
    torch.testing.assert_close(pq[0], torch.tensor([0.1, 0.85, 0.05], dtype=torch.float64))
    torch.testing.assert_close(soft_targets(torch.tensor([1, 0]), 2, 0.2, "binary"),
                               torch.tensor([0.9, 0.1], dtype=torch.float64))
    assert torch.allclose(soft_targets(torch.arange(7), 7, 0.4).sum(1),
                          torch.ones(7, dtype=torch.float64))


def test_optimal_logit_gap():
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0])
    opt = torch.optim.LBFGS([z], lr=1, max_iter=200, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = label_smoothed_cross_entropy(z.unsqueeze(0), y, 0.1)
        loss.backward()
        return loss

    opt.step(closure)
    zz = z.detach()
    zz = zz - zz[1:].mean()  # normalise: non-targets equal (they are, by symmetry)
    assert zz[1].item() == pytest.approx(zz[2].item(), abs=1e-6)
    gap = (zz[0] - zz[1]).item()
    assert gap == pytest.approx(math.log((0.9 + 0.1 / 3) / (0.1 / 3)), abs=1e-5)
    assert gap == pytest.approx(3.3322, abs=1e-4)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"alpha": 1.5}, r"Expected argument `alpha` to be in \[0, 1\), but got 1.5"),
        ({"alpha": 1.0}, r"`alpha` to be in \[0, 1\)"),
        ({"alpha": -0.1}, r"`alpha` to be in \[0, 1\)"),
        ({"alpha": "0.1"}, r"`alpha`"),
        ({"variant": "label"}, r"`variant` to be one of"),
        ({"form": "js"}, r"`form` to be one of"),
        ({"reduction": "avg"}, r"`reduction` to be one of"),
        ({"variant": "prior"}, r"`prior` to be given"),
        ({"variant": "prior", "prior": [0.5, 0.2, 0.2, 0.2]}, r"`prior` to sum to 1"),
        ({"variant": "prior", "prior": [0.5, 0.5]}, r"`prior` to have 4 entries, but got 2"),
        ({"variant": "prior", "prior": [1.2, -0.2, 0.0, 0.0]}, r"non-negative"),
        ({"variant": "uniform", "prior": [0.25] * 4}, r"`prior` to be None"),
        ({"weight": torch.ones(3)}, r"`weight` to have 4 entries"),
        ({"weight": -torch.ones(4)}, r"non-negative"),
    ],
)
def test_invalid_arguments(kwargs, match):
    z, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    kw = {"alpha": 0.1, "variant": "uniform", **kwargs}
    with pytest.raises(ValueError, match=match):
        label_smoothed_cross_entropy(z, y, kw.pop("alpha"), kw.pop("variant"), **kw)


def test_invalid_targets_and_shapes():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"`target` to be in \[0, 4\).*but got 4"):
        label_smoothed_cross_entropy(z, torch.tensor([0, 4, 1]), 0.1)
    with pytest.raises(ValueError, match=r"but got -1"):
        label_smoothed_cross_entropy(z, torch.tensor([0, -1, 1]), 0.1)
    with pytest.raises(ValueError, match=r"`target` of shape \(3,\)"):
        label_smoothed_cross_entropy(z, torch.tensor([0, 1]), 0.1)
    with pytest.raises(ValueError, match=r"integer dtype"):
        label_smoothed_cross_entropy(z, torch.tensor([0.0, 1.0, 1.0]), 0.1)
    with pytest.raises(ValueError, match=r"`logits` of shape \(N, K\)"):
        label_smoothed_cross_entropy(torch.randn(4), torch.tensor(1), 0.1)
    with pytest.raises(ValueError, match=r"`logits` of shape \(N,\) or \(N, 1\)"):
        label_smoothed_cross_entropy(z, torch.tensor([0, 1, 1]), 0.1, "binary")
    with pytest.raises(ValueError, match=r"`target` to be in \[0, 2\)"):
        label_smoothed_cross_entropy(torch.randn(3), torch.tensor([0, 2, 1]), 0.1, "binary")
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        label_smoothed_cross_entropy(torch.randn(3, 1), torch.tensor([0, 0, 0]), 0.1,
                                     "off_target")
    with pytest.raises(ValueError, match=r"`alpha` to be in"):
        LabelSmoothingCrossEntropy(alpha=1.5)
    with pytest.raises(ValueError, match=r"`prior` to sum to 1"):
        LabelSmoothingCrossEntropy(0.1, "prior", prior=torch.tensor([0.3, 0.3]))


# ----------------------------------------------------------------------------- module / dtypes


@pytest.mark.parametrize("variant", VARIANTS)
def test_module_equals_function(variant):
    z, y = _data(10, 4, torch.float32, ignore=True)
    kw = {"prior": torch.tensor([0.4, 0.3, 0.2, 0.1])} if variant == "prior" else {}
    if variant == "binary":
        z, y = z[:, 0], y.clamp(max=1)
    w = torch.tensor([1.0, 2.0]) if variant == "binary" else torch.tensor([1.0, 2.0, 0.5, 1.5])
    mod = LabelSmoothingCrossEntropy(0.15, variant, form="kl", weight=w, reduction="sum", **kw)
    fn = label_smoothed_cross_entropy(z, y, 0.15, variant, form="kl", weight=w,
                                      reduction="sum", **kw)
    torch.testing.assert_close(mod(z, y), fn)
    assert "variant" in repr(mod)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [5, 300])
def test_half_dtypes_close_to_float32(dtype, k):
    z, y = _data(64, k, torch.float32, ignore=True)
    zh = z.to(dtype)
    ours = _value_and_grad(lambda t: label_smoothed_cross_entropy(t, y, 0.1), zh)
    ref = _value_and_grad(lambda t: F.cross_entropy(t, y, label_smoothing=0.1), zh.float())
    assert ours[0].dtype == dtype and ours[1].dtype == dtype
    torch.testing.assert_close(ours[0].float(), ref[0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ours[1].float(), ref[1], rtol=2e-2, atol=1e-4)
    b = label_smoothed_cross_entropy(zh[:, 0], y.clamp(0, 1), 0.1, "binary")
    assert b.dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", ["uniform", "off_target", "prior"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(variant, dtype):
    z, y = _data(300, 1000, torch.float32, ignore=True)
    kw = {"prior": torch.softmax(torch.randn(1000), 0)} if variant == "prior" else {}
    cpu = _value_and_grad(lambda t: label_smoothed_cross_entropy(t, y, 0.1, variant, **kw), z)
    kw_cuda = {k: v.cuda() for k, v in kw.items()}
    gpu = _value_and_grad(lambda t: label_smoothed_cross_entropy(
        t, y.cuda(), 0.1, variant, **kw_cuda), z.cuda().to(dtype))
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 1e-3}
    torch.testing.assert_close(gpu[0].float().cpu(), cpu[0], **tol)
    torch.testing.assert_close(gpu[1].float().cpu(), cpu[1], **tol)
