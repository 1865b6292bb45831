"""Stacked trials in core.ml.losses: logits (T, B, K) with one alpha per trial.

The oracle is the loss itself called once per trial (logits[t], alpha[t]), the path a single
job trains with, plus torch's cross_entropy(label_smoothing=) for the uniform variant.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.ml import losses
from core.ml.losses import label_smoothed_cross_entropy


@pytest.fixture(autouse=True, params=["auto", "fused"])
def loss_path(request, monkeypatch):
    """Each test runs with small stacks in torch's kernels (as shipped) and with the fused
    kernel forced at every size."""
    if request.param == "fused":
        monkeypatch.setattr(losses, "TORCH_DISPATCH_MAX_ELEMS", 0)
    return request.param


ALPHAS = [0.0, 0.05, 0.1, 0.3]
PRIOR5 = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=torch.float64)


def _stacked_data(t: int, b: int, k: int, seed: int = 0, per_trial_targets: bool = False):
    gen = torch.Generator().manual_seed(seed)
    z = 3 * torch.randn(t, b, k, generator=gen, dtype=torch.float64)
    shape = (t, b) if per_trial_targets else (b,)
    y = torch.randint(0, k, shape, generator=gen)
    return z, y


def _per_trial(z, y, alphas, **kw):
    """Value and gradient of each trial computed alone."""
    values, grads = [], []
    for t, alpha in enumerate(alphas):
        zt = z[t].detach().clone().requires_grad_()
        yt = y if y.ndim == 1 else y[t]
        loss = label_smoothed_cross_entropy(zt, yt, alpha, **kw)
        loss.backward(torch.ones_like(loss))
        values.append(loss.detach())
        grads.append(zt.grad)
    return torch.stack(values), torch.stack(grads)


def _stacked(z, y, alphas, **kw):
    zs = z.detach().clone().requires_grad_()
    loss = label_smoothed_cross_entropy(zs, y, alphas, **kw)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), zs.grad


@pytest.mark.parametrize("k", [5, 40])  # transposed (K < 16) and row-wise kernels
@pytest.mark.parametrize("variant", ["uniform", "off_target", "prior"])
@pytest.mark.parametrize("form", ["ce", "kl"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_stacked_equals_each_trial_alone(k, variant, form, reduction):
    z, y = _stacked_data(len(ALPHAS), 33, k)
    prior = None
    if variant == "prior":
        prior = PRIOR5 if k == 5 else torch.full((k,), 1.0 / k, dtype=torch.float64)
    kw = {"variant": variant, "form": form, "reduction": reduction, "prior": prior}
    ref_v, ref_g = _per_trial(z, y, ALPHAS, **kw)
    val, grad = _stacked(z, y, ALPHAS, **kw)
    assert val.shape == ((len(ALPHAS), 33) if reduction == "none" else (len(ALPHAS),))
    torch.testing.assert_close(val, ref_v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_g, rtol=1e-12, atol=1e-13)


def test_stacked_uniform_matches_torch_per_trial():
    z, y = _stacked_data(3, 64, 10)
    alphas = torch.tensor([0.0, 0.1, 0.4])
    val, grad = _stacked(z, y, alphas)
    for t in range(3):
        zt = z[t].clone().requires_grad_()
        ref = F.cross_entropy(zt, y, label_smoothing=float(alphas[t]))
        ref.backward()
        torch.testing.assert_close(val[t], ref.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad[t], zt.grad, rtol=1e-12, atol=1e-13)


def test_stacked_weight_ignore_and_per_trial_targets():
    z, y = _stacked_data(3, 40, 7, seed=1, per_trial_targets=True)
    y[:, ::5] = -100
    weight = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    kw = {"weight": weight}
    ref_v, ref_g = _per_trial(z, y, [0.0, 0.2, 0.5], **kw)
    val, grad = _stacked(z, y, [0.0, 0.2, 0.5], **kw)
    torch.testing.assert_close(val, ref_v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_g, rtol=1e-12, atol=1e-13)
    assert bool((grad[:, ::5] == 0).all())


@pytest.mark.parametrize("variant", ["uniform", "off_target", "prior"])
@pytest.mark.parametrize("form", ["ce", "kl"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_stacked_ignored_rows_without_weights(variant, form, reduction):
    z, y = _stacked_data(4, 30, 5, seed=3, per_trial_targets=True)
    y[:, ::4] = -100
    y[2, 1] = -100  # trials ignore different rows
    kw = {"variant": variant, "form": form, "reduction": reduction,
          "prior": PRIOR5 if variant == "prior" else None}
    ref_v, ref_g = _per_trial(z, y, ALPHAS, **kw)
    val, grad = _stacked(z, y, ALPHAS, **kw)
    torch.testing.assert_close(val, ref_v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_g, rtol=1e-12, atol=1e-13)
    assert bool((grad[:, ::4] == 0).all()) and bool((grad[2, 1] == 0).all())


@pytest.mark.parametrize("form", ["ce", "kl"])
@pytest.mark.parametrize("shape", ["TB", "TB1"])
def test_stacked_binary(form, shape):
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (30,), generator=gen)
    values, grads = [], []
    for t, alpha in enumerate(ALPHAS):
        zt = z[t].clone().requires_grad_()
        loss = label_smoothed_cross_entropy(zt, y, alpha, "binary", form=form)
        loss.backward()
        values.append(loss.detach())
        grads.append(zt.grad)
    zs = (z if shape == "TB" else z.unsqueeze(2)).clone().requires_grad_()
    loss = label_smoothed_cross_entropy(zs, y, ALPHAS, "binary", form=form)
    loss.sum().backward()
    torch.testing.assert_close(loss.detach(), torch.stack(values), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(zs.grad.reshape(4, 30), torch.stack(grads), rtol=1e-12,
                               atol=1e-13)


def test_stacked_no_grad_and_float32():
    z, y = _stacked_data(2, 16, 12)
    z32 = z.float()
    with torch.no_grad():
        val = label_smoothed_cross_entropy(z32, y, [0.1, 0.2])
    assert val.dtype == torch.float32
    ref = torch.stack([F.cross_entropy(z32[t], y, label_smoothing=a)
                       for t, a in enumerate([0.1, 0.2])])
    torch.testing.assert_close(val, ref, rtol=1e-6, atol=1e-6)


def test_stacked_invalid_arguments():
    z, y = _stacked_data(2, 8, 4)
    with pytest.raises(ValueError, match=r"`logits` of shape \(T, B, K\) with T=3"):
        label_smoothed_cross_entropy(z, y, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"`alpha` to hold values in \[0, 1\)"):
        label_smoothed_cross_entropy(z, y, [0.1, 1.0])
    with pytest.raises(ValueError, match=r"`target` of shape \(8,\) or \(2, 8\)"):
        label_smoothed_cross_entropy(z, y[:5], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"`target` to be in \[0, 4\)"):
        label_smoothed_cross_entropy(z, torch.full((8,), 4), [0.1, 0.2])


def test_small_batches_take_torch_kernels_and_stay_exact(monkeypatch, loss_path):
    z, y = _stacked_data(1, 64, 10)
    zt = z[0].float().requires_grad_()
    ours = label_smoothed_cross_entropy(zt, y, 0.1, "off_target", form="kl")
    monkeypatch.setattr(losses, "TORCH_DISPATCH_MAX_ELEMS", 0)
    fused = label_smoothed_cross_entropy(zt, y, 0.1, "off_target", form="kl")
    torch.testing.assert_close(ours, fused, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"`target` to be in \[0, 10\).*but got 10"):
        label_smoothed_cross_entropy(zt, torch.full((64,), 10), 0.1)
