"""Datasets, seeded stratified splits, standardisation, label noise, views and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.ml.data import (
    BUILTIN_DATASETS,
    SpecError,
    add_label_noise,
    load_dataset,
    prepare_data,
    shift_augment,
    split_indices,
    standardize,
    to_view,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset({"source": "builtin", "name": "digits"})


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_builtin_metadata_matches_data(name):
    X, y, shape = load_dataset({"source": "builtin", "name": name})
    info = BUILTIN_DATASETS[name]
    assert X.shape == (info.n_samples, info.n_features) and X.dtype == np.float32
    assert y.dtype == np.int64 and len(np.unique(y)) == info.n_classes
    assert shape == info.image_shape


def test_a_builtin_set_is_parsed_once_and_each_caller_gets_its_own_arrays():
    import sklearn.datasets

    from core.ml import data

    data._load_builtin_cached.cache_clear()
    spec = {"source": "builtin", "name": "wine"}
    X1, y1, _ = load_dataset(spec)
    X1[:] = -1.0
    y1[:] = -1
    X2, y2, _ = load_dataset(spec)
    names = data.class_names_for(spec, 3)
    assert data._load_builtin_cached.cache_info().misses == 1  # data and names: one parse
    fresh = sklearn.datasets.load_wine()
    np.testing.assert_array_equal(X2, fresh.data.astype(np.float32))
    np.testing.assert_array_equal(y2, fresh.target)
    assert names == [str(c) for c in fresh.target_names]


def test_synthetic_and_errors():
    spec = {"source": "synthetic", "classes": 4, "features": 6, "samples": 200,
            "separation": 2.0, "seed": 3}
    X, y, shape = load_dataset(spec)
    assert X.shape == (200, 6) and sorted(np.unique(y)) == [0, 1, 2, 3] and shape is None
    assert np.array_equal(load_dataset(spec)[0], X)
    with pytest.raises(SpecError, match="features"):
        load_dataset({**spec, "classes": 5, "features": 2})
    with pytest.raises(SpecError, match="unknown builtin"):
        load_dataset({"source": "builtin", "name": "mnist"})
    with pytest.raises(SpecError, match="arrays"):
        load_dataset({"source": "upload", "id": "ds_x"})


def test_split_is_stratified_seeded_and_disjoint(digits):
    _, y, _ = digits
    tr, va, te = split_indices(y, 0.15, 0.15, seed=0)
    assert len(set(tr) | set(va) | set(te)) == len(y) == len(tr) + len(va) + len(te)
    for part in (va, te):
        counts, total = np.bincount(y[part], minlength=10), np.bincount(y, minlength=10)
        assert np.all(np.abs(counts - 0.15 * total) <= 1)  # per-class rounding
    again = split_indices(y, 0.15, 0.15, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))
    other = split_indices(y, 0.15, 0.15, seed=1)
    assert not np.array_equal(te, other[2])


def test_split_small_classes_get_one_row_each():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    tr, va, te = split_indices(y, 0.15, 0.15, seed=0)
    assert sorted(y[va]) == [0, 1] and sorted(y[te]) == [0, 1] and len(tr) == 3


def test_standardize_uses_train_stats_only():
    rng = np.random.default_rng(0)
    X_tr = rng.normal(3.0, 2.0, size=(50, 4)).astype(np.float32)
    X_tr[:, 3] = 7.0  # constant column -> std 1
    X_te = rng.normal(-5.0, 1.0, size=(20, 4)).astype(np.float32)
    mean, std, (s_tr, s_te) = standardize(X_tr, X_te)
    assert np.allclose(s_tr[:, :3].mean(0), 0, atol=1e-5)
    assert np.allclose(s_tr[:, :3].std(0), 1, atol=1e-4)
    assert std[3] == 1.0
    m, sd = X_tr[:, :3].mean(0, dtype=np.float64), X_tr[:, :3].std(0, dtype=np.float64)
    assert np.allclose(s_te[:, :3], (X_te[:, :3] - m) / sd, atol=1e-5)
    assert not np.allclose(s_te[:, :3].mean(0), 0, atol=0.5)  # test stats were not used


def test_label_noise_only_on_train_seeded_and_counted(digits):
    X, y, shape = digits
    clean = prepare_data(X, y, shape, split_seed=0, label_noise=0.0)
    noisy = prepare_data(X, y, shape, split_seed=0, label_noise=0.4)
    assert np.array_equal(noisy.y_val, clean.y_val) and np.array_equal(noisy.y_test, clean.y_test)
    assert np.array_equal(noisy.y_train_clean, clean.y_train)
    changed = int((noisy.y_train != noisy.y_train_clean).sum())
    assert noisy.label_noise_changed == changed
    n = len(noisy.y_train)
    # round(0.4 n) rows re-drawn uniformly from 10 classes: about 90 % of them change
    assert 0.8 * 0.4 * n < changed <= round(0.4 * n)
    again = prepare_data(X, y, shape, split_seed=0, label_noise=0.4)
    assert np.array_equal(again.y_train, noisy.y_train)
    assert clean.label_noise_changed == 0


def test_add_label_noise_exact_count():
    y = np.zeros(100, dtype=np.int64)
    y2, changed = add_label_noise(y, 0.5, 2, seed=7)
    assert changed == int((y2 != y).sum()) and 0 < changed <= 50
    with pytest.raises(SpecError):
        add_label_noise(y, 1.5, 2, seed=0)


def test_views_for_digits(digits):
    X, _, shape = digits
    assert to_view(X, "flat", shape).shape == (1797, 64)
    img = to_view(X, "image", shape)
    assert img.shape == (1797, 1, 8, 8) and np.array_equal(img[5, 0, 2], X[5, 16:24])
    seq = to_view(X, "sequence", shape)
    assert seq.shape == (1797, 8, 8) and np.array_equal(seq[5, 2], X[5, 16:24])
    with pytest.raises(SpecError):
        to_view(X[:, :4], "image", None)


def test_shift_augment_is_a_seeded_one_pixel_shift():
    x = torch.randn(16, 1, 8, 8)
    a = shift_augment(x, (8, 8), torch.Generator().manual_seed(0))
    b = shift_augment(x, (8, 8), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    padded = torch.nn.functional.pad(x[:, 0], (1, 1, 1, 1))
    for i in range(16):
        shifts = [padded[i, 1 - dy:9 - dy, 1 - dx:9 - dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.equal(a[i, 0], s) for s in shifts)
    flat = shift_augment(x.reshape(16, 64), (8, 8), torch.Generator().manual_seed(0))
    assert torch.equal(flat.reshape(16, 1, 8, 8), a)
