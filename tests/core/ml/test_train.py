"""Training loop: config, optimisers, early stopping, checkpoints, stop and divergence."""

from __future__ import annotations

import io

import pytest
import torch

from core.ml.data import load_dataset, prepare_data
from core.ml.nets import build_model
from core.ml.train import (
    DeviceUnavailableError,
    TrainConfig,
    TrainHooks,
    TrainingDivergedError,
    TrainingStopped,
    evaluate,
    fit,
    load_checkpoint,
    resolve_device,
    val_metrics,
)
from core.ml.upload import SpecError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    X, y, shape = load_dataset({"source": "builtin", "name": "digits"})
    d = prepare_data(X, y, shape)
    t = torch.from_numpy
    return t(d.X_train), t(d.y_train), t(d.X_val), t(d.y_val)


def _model(seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(seed)
    return build_model({"arch": "mlp", "hidden": [32], "dropout": dropout}, 64, 10, (8, 8))


def test_config_from_spec():
    spec = {"training": {"epochs": 3, "batch_size": 64, "seed": 2, "device": "cpu",
                         "augment": True, "early_stopping": None},
            "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4, "momentum": 0.5},
            "loss": {"alpha": 0.2, "variant": "off_target", "prior": None, "form": "kl"},
            "calibration": {"n_bins": 10}}
    cfg = TrainConfig.from_spec(spec)
    assert (cfg.epochs, cfg.batch_size, cfg.seed, cfg.augment) == (3, 64, 2, True)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum) == ("sgd", 0.1, 1e-4, 0.5)
    assert (cfg.alpha, cfg.variant, cfg.form, cfg.n_bins) == (0.2, "off_target", "kl", 10)
    assert cfg.early_stopping_metric is None
    assert TrainConfig.from_spec({}).early_stopping_metric == "val_nll"
    with pytest.raises(SpecError, match="optimizer"):
        TrainConfig.from_spec({"optimizer": {"name": "lbfgs"}})
    with pytest.raises(SpecError, match="metric"):
        TrainConfig.from_spec({"training": {"early_stopping": {"metric": "loss", "patience": 1}}})


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="cuda"):
            resolve_device("cuda")


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_optimisers_train(opt, data):
    cfg = TrainConfig(epochs=3, optimizer=opt, lr=0.05 if opt == "sgd" else 3e-3,
                      weight_decay=1e-4, device="cpu", early_stopping_metric=None)
    res = fit(_model(), *data, cfg)
    assert len(res.history) == 3 and res.best_epoch == 3 and not res.stopped_early
    assert set(res.history[0]) == {"epoch", "train_loss", "val_nll", "val_accuracy", "val_ece"}
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[-1]["val_accuracy"] > 0.8


def test_early_stopping_keeps_best_weights(data):
    # lr far too high for SGD without decay: val_nll rises after a few epochs
    cfg = TrainConfig(epochs=30, optimizer="sgd", lr=0.5, momentum=0.9, device="cpu",
                      early_stopping_metric="val_nll", patience=2)
    model = _model()
    res = fit(model, *data, cfg)
    assert res.stopped_early and len(res.history) == res.best_epoch + 2
    best = min(res.history, key=lambda r: r["val_nll"])
    assert best["epoch"] == res.best_epoch
    logits, labels, _ = evaluate(model, data[2], data[3])
    assert val_metrics(logits, labels)["val_nll"] == pytest.approx(best["val_nll"], rel=1e-6)


def test_checkpoint_every_epoch_and_should_stop(data):
    saved: list[bytes] = []
    epochs: list[int] = []
    polls = {"n": 0}

    def should_stop():
        polls["n"] += 1
        return "canceled" if len(epochs) == 2 else None

    hooks = TrainHooks(on_epoch=lambda row: epochs.append(row["epoch"]), should_stop=should_stop,
                       save_checkpoint=saved.append)
    with pytest.raises(TrainingStopped) as exc:
        fit(_model(), *data, TrainConfig(epochs=5, device="cpu"), hooks)
    assert exc.value.reason == "canceled"
    assert epochs == [1, 2] and len(saved) == 2
    assert polls["n"] == 2 * 10 + 1  # every batch of two epochs, then the first of epoch 3
    ckpt = load_checkpoint(saved[-1])
    assert ckpt["epoch"] == 2 and [r["epoch"] for r in ckpt["history"]] == [1, 2]
    assert {"model", "optimizer", "rng", "best_state", "config"} <= set(ckpt)
    # the checkpoint is plain tensors/containers: weights_only loading works
    torch.load(io.BytesIO(saved[-1]), weights_only=True)


def test_checkpoint_with_other_config_is_ignored(data):
    saved: list[bytes] = []
    fit(_model(), *data, TrainConfig(epochs=1, device="cpu"),
        TrainHooks(save_checkpoint=saved.append))
    res = fit(_model(), *data, TrainConfig(epochs=2, lr=5e-3, device="cpu"),
              TrainHooks(load_checkpoint=lambda: saved[0]))
    assert res.resumed_from_epoch is None and len(res.history) == 2
    res = fit(_model(), *data, TrainConfig(epochs=1, device="cpu"),
              TrainHooks(load_checkpoint=lambda: b"garbage"))
    assert res.resumed_from_epoch is None and len(res.history) == 1


def test_divergence_raises_with_epoch(data):
    cfg = TrainConfig(epochs=3, optimizer="sgd", lr=1e30, device="cpu")
    saved: list[bytes] = []
    with pytest.raises(TrainingDivergedError) as exc:
        fit(_model(), *data, cfg, TrainHooks(save_checkpoint=saved.append))
    assert exc.value.epoch == 1 and "epoch 1" in str(exc.value) and saved == []


def test_augment_needs_images(data):
    with pytest.raises(SpecError, match="augment"):
        fit(_model(), *data, TrainConfig(epochs=1, device="cpu", augment=True), image_shape=None)
