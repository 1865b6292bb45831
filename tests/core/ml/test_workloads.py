"""Issue 12 in core/ml: image layouts, the new nets, the cost estimate, schedules, augmentation
and exact resume with a schedule. Oracles: He et al.'s parameter counts, torch's parameter
count and FlopCounterMode, torch's own LR schedulers, autograd's saved tensors, numpy."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.ml.augment import augment_defaults, random_crop_flip
from core.ml.cost import estimate_cost
from core.ml.errors import InvalidDatasetError
from core.ml.experiment import prepare_experiment, run_experiment
from core.ml.images import channel_stats, image_view
from core.ml.nets import build_model
from core.ml.schedules import lr_factor
from core.ml.train import TrainHooks, fit
from core.ml.upload import parse_upload

torch.set_num_threads(1)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
@pytest.mark.parametrize("layout", ["NHW", "NHWC1", "NHWC3", "NCHW1", "NCHW3"])
def test_every_layout_and_dtype_is_stored_as_uploaded(layout: str, dtype: type) -> None:
    rng = np.random.default_rng(0)
    n, h, w = 12, 6, 7
    c = 3 if layout.endswith("3") else 1
    canon = (rng.integers(0, 256, size=(n, c, h, w))).astype(dtype)  # (N, C, H, W)
    X = {"NHW": canon[:, 0], "NHWC1": canon.transpose(0, 2, 3, 1),
         "NHWC3": canon.transpose(0, 2, 3, 1), "NCHW1": canon, "NCHW3": canon}[layout]
    y = np.array([0, 1, 2] * 4)
    Xs, ys, info = parse_upload(_npz(X=X, y=y), "npz")
    assert Xs.dtype == np.dtype(dtype)  # uint8 stays uint8
    expected = canon[:, 0] if c == 1 else canon
    assert np.array_equal(Xs, expected)
    assert info["image_shape"] == ([h, w] if c == 1 else [3, h, w])
    assert info["layout"] == {"NHW": "NHW", "NHWC1": "NHWC", "NHWC3": "NHWC"}.get(layout, "NCHW")
    assert info["n_features"] == c * h * w and ys.tolist() == y.tolist()


@pytest.mark.parametrize("X", [
    np.zeros((9, 4, 4, 5), np.uint8),        # no channel axis of size 1 or 3
    np.zeros((9, 2, 4, 4, 3), np.uint8),     # 5-D
    np.zeros((9, 4, 4), np.int64),           # an integer dtype other than uint8
    np.zeros((9, 4, 4, 3), np.bool_),
], ids=["C5", "5d", "int64", "bool"])
def test_other_layouts_are_refused_naming_the_accepted_ones(X: np.ndarray) -> None:
    with pytest.raises(InvalidDatasetError, match=r"\(N, H, W, C\) or \(N, C, H, W\)"):
        parse_upload(_npz(X=X, y=np.array([0, 1, 2] * 3)), "npz")


def test_per_channel_statistics_come_from_the_training_split_only() -> None:
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(60, 3, 8, 8)).astype(np.uint8)
    X[:, 1] //= 4  # channels with different statistics
    y = np.repeat(np.arange(3), 20)
    prep = prepare_experiment({"dataset": {"source": "upload", "id": "x"},
                               "model": {"arch": "cnn", "hidden": [4]}}, arrays=(X, y))
    assert prep.Xtr.dtype == torch.uint8 and prep.Xtr.shape[1:] == (3, 8, 8)
    mean, std = channel_stats(prep.data.X_train)
    ref = prep.data.X_train.astype(np.float64)
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-6)
    assert np.allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-5)
    normed = prep.build().inorm(prep.Xtr)  # type: ignore[operator]
    assert normed.dtype == torch.float32
    assert torch.allclose(normed.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(normed.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_views_of_colour_images_agree() -> None:
    X = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).astype(np.uint8)
    seq = image_view(X, "sequence", (3, 4, 5))
    assert seq.shape == (2, 4, 15) and np.array_equal(seq[1, 2], X[1, :, 2, :].reshape(-1))
    assert image_view(X, "flat", (3, 4, 5)).shape == (2, 60)


# --------------------------------------------------------------------------- nets and cost


@pytest.mark.parametrize(("depth", "paper_m"), [(20, 0.27), (32, 0.46), (44, 0.66),
                                                (56, 0.85), (110, 1.7)])
def test_resnet_parameter_counts_are_he_et_al(depth: int, paper_m: float) -> None:
    model = build_model({"arch": "resnet", "depth": depth}, 3072, 10, (3, 32, 32))
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 2 if depth < 110 else 1) == paper_m
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.features(torch.zeros(2, 3, 32, 32)).shape == (2, 64)


CASES = [
    ({"arch": "linear"}, 784, (28, 28)),
    ({"arch": "mlp", "hidden": [64, 32]}, 784, (28, 28)),
    ({"arch": "cnn", "hidden": [32, 64, 128]}, 784, (28, 28)),
    ({"arch": "cnn", "hidden": [8, 8]}, 64, (8, 8)),
    ({"arch": "cnn", "hidden": [16, 32]}, 3072, (3, 32, 32)),
    ({"arch": "resnet", "depth": 20}, 3072, (3, 32, 32)),
    ({"arch": "resnet", "depth": 32}, 784, (28, 28)),
    ({"arch": "gru", "hidden": [16, 16]}, 64, (8, 8)),
    ({"arch": "transformer", "hidden": [16, 16]}, 64, (8, 8)),
]


@pytest.mark.parametrize(("spec", "f", "shape"), CASES, ids=[str(c[0]) for c in CASES])
def test_cost_estimate_matches_torch(spec: dict, f: int, shape: tuple[int, ...]) -> None:
    model = build_model(spec, f, 10, shape)
    cost = estimate_cost(spec, n_features=f, n_classes=10, image_shape=shape, n_train=1000,
                         n_val=200, batch_size=64)
    assert cost.parameters == sum(p.numel() for p in model.parameters())
    view = model.input_view  # type: ignore[attr-defined]
    c, h, w = (1, *shape) if len(shape) == 2 else shape
    x = torch.zeros((1, c, h, w) if view == "image" else (1, h, c * w) if view == "sequence"
                    else (1, f))
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    rel = 0.0 if spec["arch"] in ("linear", "mlp", "cnn", "resnet") else 0.2
    assert abs(cost.flops_per_sample - flops) <= rel * flops + 1, (cost.flops_per_sample, flops)
    assert math.isclose(cost.epoch_gflop, (3 * 1000 + 200) * cost.flops_per_sample / 1e9)


@pytest.mark.parametrize("spec", [{"arch": "cnn", "hidden": [32, 64, 128]},
                                  {"arch": "resnet", "depth": 20}, {"arch": "mlp"}])
def test_activation_estimate_is_within_2x_of_what_autograd_saves(spec: dict) -> None:
    shape = (3, 32, 32)
    model = build_model(spec, 3072, 10, shape)
    model.train()
    saved = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and t.is_floating_point():
            seen.add(ptr)
            saved += t.untyped_storage().nbytes()
        return t

    x = torch.randn(16, 3072) if spec["arch"] == "mlp" else torch.randn(16, *shape)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    cost = estimate_cost(spec, n_features=3072, n_classes=10, image_shape=shape, n_train=1000,
                         n_val=100, batch_size=16)
    assert saved / 2 <= cost.activation_bytes <= saved * 2, (cost.activation_bytes, saved)


# --------------------------------------------------------------------------- schedules


def _torch_lrs(make: object, steps: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(opt)  # type: ignore[operator]
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_and_cosine_schedules_equal_torchs() -> None:
    spe, epochs = 7, 10
    steps = spe * epochs
    step = [0.1 * lr_factor(s, steps_per_epoch=spe, epochs=epochs, name="step",
                            milestones=[3, 6], gamma=0.2, warmup_epochs=0) for s in range(steps)]
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(
        o, milestones=[3 * spe, 6 * spe], gamma=0.2), steps)
    assert np.allclose(step, ref, rtol=1e-12)
    cos = [0.1 * lr_factor(s, steps_per_epoch=spe, epochs=epochs, name="cosine", milestones=[],
                           gamma=0.1, warmup_epochs=0) for s in range(steps)]
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps), steps)
    assert np.allclose(cos, ref, rtol=1e-9, atol=1e-12)
    warm = [lr_factor(s, steps_per_epoch=spe, epochs=epochs, name="constant", milestones=[],
                      gamma=0.1, warmup_epochs=2) for s in range(3 * spe)]
    assert warm[0] == pytest.approx(1 / 14) and warm[13] == 1.0 and warm[20] == 1.0
    assert all(b > a for a, b in zip(warm[:13], warm[1:14], strict=True))


# --------------------------------------------------------------------------- augmentation


def test_crop_and_flip_take_windows_of_the_padded_image() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 6, 5), dtype=torch.uint8)
    same = random_crop_flip(x, (3, 6, 5), "image", gen, padding=0, flip=False)
    assert torch.equal(same, x)
    out = random_crop_flip(x, (3, 6, 5), "image", gen, padding=2, flip=True)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flipped_seen = False
    for i in range(len(x)):
        windows = [padded[i, :, r:r + 6, c:c + 5] for r in range(5) for c in range(5)]
        plain = any(torch.equal(out[i], win) for win in windows)
        flipped = any(torch.equal(out[i], win.flip(2)) for win in windows)
        assert plain or flipped
        flipped_seen |= flipped and not plain
    assert flipped_seen
    # the sequence view of colour images is cropped like the image view
    seq = x.permute(0, 2, 1, 3).reshape(32, 6, 15)
    a = random_crop_flip(x, (3, 6, 5), "image", torch.Generator().manual_seed(3), padding=1,
                         flip=True)
    b = random_crop_flip(seq, (3, 6, 5), "sequence", torch.Generator().manual_seed(3),
                         padding=1, flip=True)
    assert torch.equal(a.permute(0, 2, 1, 3).reshape(32, 6, 15), b)
    assert augment_defaults((3, 32, 32), None, None) == (4, True)
    assert augment_defaults((8, 8), None, None) == (1, False)


# --------------------------------------------------------------------------- training


def _colour_set(n: int = 90) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), n // 3)
    X = rng.integers(0, 60, size=(n, 3, 8, 8)).astype(np.uint8)
    for k in range(3):
        X[y == k, k] += 150  # class k is bright in channel k
    return X, y


def test_exact_resume_with_a_schedule_nesterov_and_augmentation() -> None:
    X, y = _colour_set()
    spec = {"dataset": {"source": "upload", "id": "x"},
            "model": {"arch": "cnn", "hidden": [8, 8]},
            "optimizer": {"name": "sgd", "lr": 0.05, "nesterov": True},
            "training": {"epochs": 4, "batch_size": 16, "augment": True, "device": "cpu",
                         "schedule": {"name": "step", "milestones": [2, 3], "gamma": 0.5,
                                      "warmup_epochs": 1},
                         "early_stopping": None}}
    prep = prepare_experiment(spec, arrays=(X, y))

    def run(hooks: TrainHooks) -> tuple[torch.nn.Module, list]:
        torch.manual_seed(0)
        model = prep.build()
        res = fit(model, prep.Xtr, prep.ytr, prep.Xva, prep.yva, prep.cfg, hooks,
                  image_shape=prep.image_shape, fingerprint=prep.fingerprint)
        return model, res.history

    saved: list[bytes] = []
    full, history = run(TrainHooks(save_checkpoint=saved.append))
    torch.manual_seed(123)  # the resumed process has another global RNG state
    resumed, rest = run(TrainHooks(load_checkpoint=lambda: saved[1]))
    assert [r["epoch"] for r in rest] == [1, 2, 3, 4] and rest == history
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_resnet20_job_on_a_colour_uint8_set_has_the_full_calibration_block() -> None:
    X, y = _colour_set(60)
    out = run_experiment({"dataset": {"source": "upload", "id": "x"},
                          "model": {"arch": "resnet", "depth": 20},
                          "optimizer": {"name": "sgd", "lr": 0.05, "nesterov": True},
                          "training": {"epochs": 1, "batch_size": 16, "device": "cpu",
                                       "augment": True,
                                       "schedule": {"name": "cosine"}}}, arrays=(X, y))
    r = out.result
    assert r["dataset"]["layout"] == "NCHW" and r["dataset"]["dtype"] == "uint8"
    assert r["dataset"]["image_shape"] == [3, 8, 8]
    assert {"accuracy", "nll", "ece", "reliability", "logit_gap"} <= set(r["test"])
    assert r["temperature_scaled"]["temperature"] > 0 and r["projection"] is not None
    assert len(r["history"]) == 1 and "model.safetensors" in out.artifacts
