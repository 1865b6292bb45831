"""Test-time perturbations (core/ml/shifts.py) and the train subsample (split.train_fraction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris

from core.ml.calibration import expected_calibration_error
from core.ml.data import prepare_data, split_indices, subsample_train
from core.ml.errors import SpecError
from core.ml.shifts import apply_shift, shift_metrics, translate

IMAGE = ("translate", "rotate", "gaussian_noise", "blur", "contrast")
TABULAR = ("gaussian_noise", "feature_dropout")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


# --------------------------------------------------------------------------- train_fraction


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_subsample_is_stratified_and_keeps_every_class(digits, fraction):
    _, y = digits
    tr, _, _ = split_indices(y, 0.15, 0.15, 0)
    y_tr = y[tr]
    keep = subsample_train(y_tr, fraction, 0)
    assert len(np.unique(keep)) == len(keep) and np.all(np.diff(keep) > 0)
    full = np.bincount(y_tr, minlength=10)
    kept = np.bincount(y_tr[keep], minlength=10)
    expected = np.maximum(1, np.round(fraction * full)).astype(int)
    np.testing.assert_array_equal(kept, expected)  # per class, by hand: max(1, round(f * n_k))
    assert kept.min() >= 1


def test_tiny_fraction_keeps_one_example_per_class(digits):
    _, y = digits
    keep = subsample_train(y, 1e-6, 3)
    np.testing.assert_array_equal(np.bincount(y[keep]), np.ones(10, dtype=int))


def test_subsample_is_seeded(digits):
    _, y = digits
    a, b = subsample_train(y, 0.1, 7), subsample_train(y, 0.1, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, subsample_train(y, 0.1, 8))
    np.testing.assert_array_equal(subsample_train(y, 1.0, 7), np.arange(len(y)))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_subsample_rejects_fractions_outside_0_1(digits, bad):
    with pytest.raises(SpecError, match="train_fraction"):
        subsample_train(digits[1], bad, 0)


def test_validation_and_test_rows_are_untouched(digits):
    X, y = digits
    full = prepare_data(X, y, (8, 8), split_seed=2)
    part = prepare_data(X, y, (8, 8), split_seed=2, train_fraction=0.1)
    _, va, te = split_indices(y, 0.15, 0.15, 2)
    for prep in (full, part):  # the same rows, back in raw units
        np.testing.assert_array_equal(prep.y_val, y[va])
        np.testing.assert_array_equal(prep.y_test, y[te])
        np.testing.assert_allclose(prep.X_val * prep.std + prep.mean, X[va], atol=1e-4)
        np.testing.assert_allclose(prep.X_test * prep.std + prep.mean, X[te], atol=1e-4)
    assert len(part.y_train) == int(np.maximum(1, np.round(0.1 * np.bincount(full.y_train))).sum())
    raw_part = part.X_train * part.std + part.mean
    raw_full = {tuple(r) for r in np.round(full.X_train * full.std + full.mean, 3)}
    assert all(tuple(r) in raw_full for r in np.round(raw_part, 3))  # a subset of the train rows


# --------------------------------------------------------------------------- perturbations


@pytest.mark.parametrize("name", IMAGE)
def test_image_shift_at_intensity_0_is_identity_and_each_is_deterministic(digits, name):
    X = digits[0][:200]
    same, applied = apply_shift(X, name, 0, image_shape=(8, 8), seed=5, pixel_range=16.0)
    np.testing.assert_array_equal(same, X)
    assert applied == {"name": name, "intensity": 0, "seed": 5}
    for i in range(1, 6):
        a, echo_a = apply_shift(X, name, i, image_shape=(8, 8), seed=5, pixel_range=16.0)
        b, echo_b = apply_shift(X, name, i, image_shape=(8, 8), seed=5, pixel_range=16.0)
        np.testing.assert_array_equal(a, b)
        assert echo_a == echo_b and echo_a["intensity"] == i and a.shape == X.shape
        assert not np.allclose(a, X)


@pytest.mark.parametrize("name", TABULAR)
def test_tabular_shift_at_intensity_0_is_identity_and_deterministic(name):
    X = load_iris().data.astype(np.float32)
    same, _ = apply_shift(X, name, 0, image_shape=None, seed=1)
    np.testing.assert_array_equal(same, X)
    for i in range(1, 6):
        a, echo = apply_shift(X, name, i, image_shape=None, seed=1)
        np.testing.assert_array_equal(a, apply_shift(X, name, i, image_shape=None, seed=1)[0])
        assert not np.allclose(a, X) and echo["intensity"] == i
    c, _ = apply_shift(X, name, 3, image_shape=None, seed=2)
    assert not np.array_equal(c, apply_shift(X, name, 3, image_shape=None, seed=1)[0])


def test_translated_digit_shifted_back_equals_the_original_where_nothing_fell_off(digits):
    imgs = digits[0][:50].reshape(-1, 8, 8)
    for dy, dx in [(2, 0), (0, -3), (1, 2), (-2, -1)]:
        moved = translate(imgs, dy, dx)
        back = translate(moved, -dy, -dx)
        rows = slice(max(0, -dy), 8 - max(0, dy))  # source pixels that stayed on the canvas
        cols = slice(max(0, -dx), 8 - max(0, dx))
        np.testing.assert_array_equal(back[:, rows, cols], imgs[:, rows, cols])
        mask = np.ones((8, 8), bool)
        mask[rows, cols] = False
        assert np.all(back[:, mask] == 0)  # what fell off comes back as zero fill
    np.testing.assert_array_equal(translate(imgs, 0, 1)[:, :, 0], 0)
    np.testing.assert_array_equal(translate(imgs, 0, 1)[:, :, 1:], imgs[:, :, :-1])


def test_translate_shift_moves_each_image_by_the_echoed_pixels(digits):
    X = digits[0][:300]
    out, applied = apply_shift(X, "translate", 2, image_shape=(8, 8), seed=0)
    assert applied["pixels"] == 2 and sum(applied["direction_counts"].values()) == 300
    imgs, moved = X.reshape(-1, 8, 8), out.reshape(-1, 8, 8)
    candidates = [translate(imgs, dy, dx) for dy, dx in [(-2, 0), (2, 0), (0, -2), (0, 2)]]
    found = {lab: 0 for lab in ("up", "down", "left", "right")}
    for n in range(300):
        hits = [i for i, c in enumerate(candidates) if np.array_equal(c[n], moved[n])]
        assert len(hits) == 1
        found[list(found)[hits[0]]] += 1
    assert found == applied["direction_counts"]


def test_feature_dropout_sets_the_echoed_count_to_the_training_mean():
    X = np.random.default_rng(0).normal(size=(100, 20)).astype(np.float32) + 3.0
    out, applied = apply_shift(X, "feature_dropout", 2, image_shape=None, seed=0)
    assert applied["features_per_row"] == 4
    assert np.all((out == 0).sum(axis=1) == 4)
    np.testing.assert_array_equal(out[out != 0], X[out != 0])


def test_gaussian_noise_has_the_echoed_scale():
    X = np.zeros((4000, 10), np.float32)
    out, applied = apply_shift(X, "gaussian_noise", 5, image_shape=None, seed=0)
    assert applied["sigma_std"] == pytest.approx(1.0)
    assert out.std() == pytest.approx(1.0, rel=0.02)
    img, echo = apply_shift(np.zeros((500, 64), np.float32), "gaussian_noise", 1,
                            image_shape=(8, 8), seed=0, pixel_range=16.0)
    assert echo["sigma"] == pytest.approx(0.08 * 16) and img.std() == pytest.approx(1.28, rel=0.03)


def test_contrast_keeps_each_image_mean_and_scales_the_spread(digits):
    X = digits[0][:20]
    out, applied = apply_shift(X, "contrast", 1, image_shape=(8, 8), seed=0)
    assert applied["factor"] == 0.4
    np.testing.assert_allclose(out.mean(axis=1), X.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(out.std(axis=1), 0.4 * X.std(axis=1), rtol=1e-5)


@pytest.mark.parametrize(("name", "shape", "intensity", "match"), [
    ("translate", None, 1, "does not apply to tabular"),
    ("feature_dropout", (8, 8), 1, "does not apply to image"),
    ("blur", (8, 8), 6, "intensity"),
    ("blur", (8, 8), -1, "intensity"),
    ("zoom", (8, 8), 1, "unknown shift"),
])
def test_bad_shift_arguments_are_spec_errors(name, shape, intensity, match):
    with pytest.raises(SpecError, match=match):
        apply_shift(np.zeros((2, 64), np.float32), name, intensity, image_shape=shape)


def test_shift_metrics_match_torch_and_the_ece_estimator():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 5, generator=g) * 3
    labels = torch.randint(0, 5, (300,), generator=g)
    m = shift_metrics(logits, labels, 15)
    probs = torch.softmax(logits.double(), 1)
    assert m["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()))
    assert m["nll"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits.double(),
                                                                             labels)))
    assert m["mean_confidence"] == pytest.approx(float(probs.max(1).values.mean()))
    assert m["ece"] == pytest.approx(expected_calibration_error(probs.float(), labels, 15))
    from torchmetrics.functional.classification import multiclass_calibration_error
    tm = multiclass_calibration_error(probs.float(), labels, num_classes=5, n_bins=15, norm="l1")
    assert m["ece"] == pytest.approx(float(tm), abs=1e-5)
