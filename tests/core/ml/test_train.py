"""Training loop: config, optimisers, early stopping, checkpoints, stop and divergence."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import pickle
import struct
import tempfile
from collections.abc import Iterator

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from core.ml.data import load_dataset, prepare_data
from core.ml.errors import DeviceUnavailableError, SpecError, TrainingDivergedError, TrainingStopped
from core.ml.nets import build_model
from core.ml.train import (
    CHECKPOINT_FORMAT,
    TrainConfig,
    TrainHooks,
    encode_checkpoint,
    evaluate,
    fit,
    load_checkpoint,
    resolve_device,
    val_metrics,
)
from core.spec import JobSpec

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


def test_config_defaults_are_the_job_spec_defaults():
    """TrainConfig() states no defaults of its own: it equals the config of an empty spec."""
    assert TrainConfig() == TrainConfig.from_spec({})
    resolved = JobSpec().model_dump(mode="json")
    assert TrainConfig() == TrainConfig.from_spec(resolved)
    assert (TrainConfig().early_stopping_metric, TrainConfig().patience) == (
        resolved["training"]["early_stopping"]["metric"],
        resolved["training"]["early_stopping"]["patience"],
    )


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


def test_evaluate_keeps_only_the_features_of_the_rows_asked_for(data):
    model = _model()
    X, y = data[2], data[3]
    logits, labels, none = evaluate(model, X, y, batch_size=16)
    assert none is None
    rows = torch.tensor([0, 3, 15, 16, 17, 40, len(X) - 1])  # across batch boundaries
    again, _, feats = evaluate(model, X, y, batch_size=16, feature_rows=rows)
    assert torch.equal(again, logits) and torch.equal(labels, y)
    with torch.no_grad():
        expected = model.features(X[rows])
    assert feats is not None and feats.shape == (len(rows), expected.shape[1])
    torch.testing.assert_close(feats, expected)
    _, _, empty = evaluate(model, X, y, feature_rows=torch.tensor([], dtype=torch.long))
    assert empty is not None and empty.shape == (0, expected.shape[1])


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
    # the checkpoint is one safetensors blob: tensors plus JSON metadata, nothing pickled
    with safe_open_bytes(saved[-1]) as st:
        assert set(st.metadata()) == {"softlabel-checkpoint"}
        assert json.loads(st.metadata()["softlabel-checkpoint"])["version"] == CHECKPOINT_FORMAT


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


@contextlib.contextmanager
def safe_open_bytes(blob: bytes) -> Iterator:
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(blob)
        f.flush()
        with safe_open(f.name, "pt") as st:
            yield st


def _run_and_keep(data, cfg: TrainConfig, model=None) -> tuple[list[bytes], torch.nn.Module]:
    saved: list[bytes] = []
    model = model or _model(dropout=0.2)
    fit(model, *data, cfg, TrainHooks(save_checkpoint=saved.append))
    return saved, model


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_checkpoint_round_trip_is_exact(data, opt):
    cfg = TrainConfig(epochs=4, optimizer=opt, lr=0.05 if opt == "sgd" else 3e-3,
                      device="cpu", early_stopping_metric=None)
    saved, model = _run_and_keep(data, cfg)
    ckpt = load_checkpoint(saved[-1])
    assert ckpt["epoch"] == 4 and ckpt["best_state"] is None
    for k, v in model.state_dict().items():  # no early stopping: the last epoch's weights
        assert torch.equal(ckpt["model"][k], v) and ckpt["model"][k].dtype == v.dtype
    # decode → encode gives the same bytes: nothing is lost or rounded on the way
    assert encode_checkpoint(ckpt) == saved[-1]
    # the optimizer state loads into a fresh optimizer and reproduces it exactly
    fresh = torch.optim.SGD(_model().parameters(), lr=1) if opt == "sgd" else \
        torch.optim.AdamW(_model().parameters())
    fresh.load_state_dict(ckpt["optimizer"])
    again = load_checkpoint(encode_checkpoint({**ckpt, "optimizer": fresh.state_dict()}))
    assert again["optimizer"]["param_groups"] == ckpt["optimizer"]["param_groups"]
    for idx, state in ckpt["optimizer"]["state"].items():
        for name, value in state.items():
            other = again["optimizer"]["state"][idx][name]
            assert torch.equal(other, value) if isinstance(value, torch.Tensor) else \
                other == value


def test_checkpoint_keeps_the_best_state_apart_from_the_model(data):
    # early stopping on: the best state is stored only when it differs from the model
    cfg = TrainConfig(epochs=12, optimizer="sgd", lr=0.5, momentum=0.9, device="cpu",
                      early_stopping_metric="val_nll", patience=3)
    saved, _ = _run_and_keep(data, cfg)
    kinds = set()
    for blob in saved:
        ckpt = load_checkpoint(blob)
        kinds.add(_meta(blob)["best"])
        assert ckpt["best_state"] is not None and ckpt["best_state"].keys() == ckpt["model"].keys()
        same = all(torch.equal(ckpt["best_state"][k], ckpt["model"][k]) for k in ckpt["model"])
        assert same == (ckpt["best_epoch"] == ckpt["epoch"])
        assert encode_checkpoint(ckpt) == blob
    assert kinds == {"model", "stored"}


def _with_metadata(blob: bytes, raw: str | None = None, **changes) -> bytes:
    """The same tensors under edited metadata (what a tampered or foreign blob looks like)."""
    size = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + size])
    meta = header["__metadata__"]
    meta[TAG] = raw if raw is not None else json.dumps({**json.loads(meta[TAG]), **changes})
    data = json.dumps(header).encode()
    data += b" " * (-len(data) % 8)
    return struct.pack("<Q", len(data)) + data + blob[8 + size:]


TAG = "softlabel-checkpoint"


class _Boom:
    ran = False

    def __reduce__(self):
        return (_Boom.mark, ())

    @staticmethod
    def mark():
        _Boom.ran = True


def test_foreign_tampered_and_old_checkpoints_are_ignored(data):
    cfg = TrainConfig(epochs=2, device="cpu")
    saved, _ = _run_and_keep(data, cfg)
    good = saved[0]
    assert load_checkpoint(_with_metadata(good))["epoch"] == 1  # the edit helper is faithful
    old_format = io.BytesIO()
    torch.save({"format": 1, "model": {}}, old_format)
    bad = {
        "pickle": pickle.dumps({"format": 2, "x": _Boom()}),
        "torch.save (format 1)": old_format.getvalue(),
        "other version": _with_metadata(good, version=1),
        "unknown version": _with_metadata(good, version=99),
        "version as text": _with_metadata(good, version=str(CHECKPOINT_FORMAT)),
        "meta not json": _with_metadata(good, raw="{not json"),
        "meta not an object": _with_metadata(good, raw="[2]"),
        "meta wrong shape": _with_metadata(good, raw=json.dumps(
            {"version": CHECKPOINT_FORMAT, "__reduce__": ["os.system", "true"]})),
        "meta wrong types": _with_metadata(good, epoch={"x": 1}),
        "best claims a bogus source": _with_metadata(good, best="../../etc"),
        "plain safetensors": safetensors_save({"w": torch.zeros(2)}, metadata={"format": "pt"}),
        "huge header": struct.pack("<Q", 1 << 62) + good[8:],
        "truncated": good[: len(good) // 2],
        "empty-ish": b"\x00" * 4,
    }
    for name, blob in bad.items():
        with pytest.raises(ValueError):
            load_checkpoint(blob)
        res = fit(_model(), *data, cfg, TrainHooks(load_checkpoint=functools.partial(bytes, blob)))
        assert res.resumed_from_epoch is None and len(res.history) == 2, name
    assert not _Boom.ran
    res = fit(_model(), *data, cfg, TrainHooks(load_checkpoint=lambda: good))
    assert res.resumed_from_epoch == 1


def _meta(blob: bytes) -> dict:
    with safe_open_bytes(blob) as st:
        return json.loads(st.metadata()[TAG])


def test_checkpoint_ready_freezes_the_epoch_and_encodes_the_same_bytes(data):
    # the asynchronous hook: state is copied at the epoch's end, encoded later (or never)
    cfg = TrainConfig(epochs=4, device="cpu", early_stopping_metric="val_nll", patience=9)
    eager: list[bytes] = []
    lazy: list = []
    fit(_model(dropout=0.2), *data, cfg,
        TrainHooks(save_checkpoint=eager.append, checkpoint_ready=lazy.append))
    # encoded only now, after training went on and changed every tensor in place
    assert [encode() for encode in lazy] == eager
    assert [load_checkpoint(b)["epoch"] for b in eager] == [1, 2, 3, 4]
    alone: list = []
    fit(_model(dropout=0.2), *data, cfg, TrainHooks(checkpoint_ready=alone.append))
    assert [encode() for encode in alone] == eager


def test_checkpoint_of_tensors_sharing_storage(data):
    # tied weights or views of one buffer: stored as separate copies, read back equal
    saved, model = _run_and_keep(data, TrainConfig(epochs=1, device="cpu"))
    ckpt = load_checkpoint(saved[0])
    flat = torch.arange(12.0)
    ckpt["model"] = {**ckpt["model"], "tied.a": flat[:6], "tied.b": flat[6:], "tied.c": flat[:6]}
    back = load_checkpoint(encode_checkpoint(ckpt))
    assert torch.equal(back["model"]["tied.b"], flat[6:])
    assert torch.equal(back["model"]["tied.a"], back["model"]["tied.c"])


def test_preload_training_leaves_the_first_optimiser_nothing_to_import() -> None:
    """The worker preloads before its lease clock: a fresh process's first optimiser imports
    torch._dynamo (about a second) unless preload_training did it already."""
    import subprocess
    import sys

    probe = (
        "import sys, core.ml.experiment, core.ml.sweep\n"
        "from core.ml.train import make_optimizer, preload_training\n"
        "from core.ml.train_config import TrainConfig\n"
        "import torch\n"
        "assert 'torch._dynamo' not in sys.modules, 'already imported: nothing to preload'\n"
        "preload_training()\n"
        "before = set(sys.modules)\n"
        "make_optimizer([torch.zeros(3, requires_grad=True)], TrainConfig(), fused=True)\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
