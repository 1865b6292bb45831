"""run_experiment end to end: accuracy, result document, artifacts, determinism, resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as safetensors_load

from core.ml.errors import SpecError, TrainingStopped
from core.ml.experiment import run_experiment
from core.ml.figures import figure_names, render_figure
from core.ml.train import TrainHooks
from core.ml.upload import to_npz_bytes

torch.set_num_threads(1)

DEFAULT = {
    "dataset": {"source": "builtin", "name": "digits"},
    "label_noise": 0.0,
    "split": {"val": 0.15, "test": 0.15, "seed": 0},
    "model": {"arch": "mlp", "hidden": [256, 256], "dropout": 0.0},
    "loss": {"alpha": 0.1, "variant": "uniform", "prior": None, "form": "ce"},
    "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0, "momentum": 0.9},
    "training": {"epochs": 30, "batch_size": 128, "seed": 0, "device": "cpu", "augment": False,
                 "early_stopping": {"metric": "val_nll", "patience": 5}},
    "calibration": {"n_bins": 15, "temperature_scaling": True, "projection_classes": None},
    "tags": {}, "webhook_url": None,
}


def make_spec(**over) -> dict:
    spec = copy.deepcopy(DEFAULT)
    for path, value in over.items():
        node = spec
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return spec


def _without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "timing"}


@pytest.fixture(scope="module")
def digits_run():
    return run_experiment(make_spec(training__epochs=15))


def test_digits_mlp_is_accurate_and_calibrated(digits_run):
    r = digits_run.result
    assert r["test"]["accuracy"] >= 0.95
    assert r["dataset"] == {
        "n_train": 1259, "n_val": 269, "n_test": 269, "n_classes": 10, "n_features": 64,
        "sha256": r["dataset"]["sha256"], "label_noise_changed": 0,
        "class_names": [str(i) for i in range(10)], "image_shape": [8, 8],
        "layout": "NHW", "dtype": "float32", "channels": 1, "uploaded_layout": None}
    assert len(r["dataset"]["sha256"]) == 64
    assert [h["epoch"] for h in r["history"]] == list(range(1, len(r["history"]) + 1))
    assert 1 <= r["best_epoch"] <= 15 and isinstance(r["stopped_early"], bool)
    ts = r["temperature_scaled"]
    assert ts["temperature"] > 0 and ts["test"]["accuracy"] == pytest.approx(r["test"]["accuracy"])
    proj = r["projection"]
    assert proj["classes"] == [0, 1, 2] and 0 < len(proj["points"]) <= 500
    assert all(len(p) == 3 and p[2] in (0, 1, 2) for p in proj["points"])
    assert r["environment"]["device"] == "cpu" and r["timing"]["samples_per_s"] > 0
    json.dumps(r, allow_nan=False)  # strictly JSON-safe


def test_the_posthoc_temperature_block_is_the_temperature_scaled_report(digits_run):
    """One T on the same test logits is computed once; a fresh post-hoc fit agrees with it."""
    import io

    from core.ml.posthoc import posthoc_report

    r = digits_run.result
    method = r["posthoc"]["methods"]["temperature"]
    assert method["test"] == r["temperature_scaled"]["test"]
    assert method["params"] == {"temperature": r["temperature_scaled"]["temperature"]}
    npz = np.load(io.BytesIO(digits_run.artifacts["predictions.npz"]))
    fresh = posthoc_report(["temperature"], torch.from_numpy(npz["val_logits"]),
                           torch.from_numpy(npz["val_labels"]),
                           torch.from_numpy(npz["test_logits"]),
                           torch.from_numpy(npz["test_labels"]), alpha=0.1)
    again = fresh["methods"]["temperature"]
    assert again["params"]["temperature"] == pytest.approx(method["params"]["temperature"],
                                                           rel=1e-6)
    for key in ("accuracy", "nll", "brier", "ece", "ece_adaptive", "smooth_ece", "mce"):
        assert again["test"][key] == pytest.approx(method["test"][key], rel=1e-5, abs=1e-7), key
    assert again["test"]["ci95"]["ece"] == pytest.approx(method["test"]["ci95"]["ece"], abs=1e-5)


def test_artifacts(digits_run):
    art = digits_run.artifacts
    assert set(art) == {"model.safetensors", "model.json", "predictions.npz"}
    result = {**digits_run.result, "spec": DEFAULT}
    assert figure_names(result) == ["reliability.png", "penultimate.png"]
    for name in ("reliability.png", "penultimate.png"):
        png = render_figure(name, result, key="test_artifacts")
        assert png is not None and png.startswith(b"\x89PNG")
        assert render_figure(name, result, key="test_artifacts") is png  # drawn once
    assert render_figure("model.json", result, key="test_artifacts") is None
    state = safetensors_load(art["model.safetensors"])
    assert state["head.weight"].shape == (10, 256)
    doc = json.loads(art["model.json"])
    assert doc["model"]["arch"] == "mlp" and len(doc["standardize"]["mean"]) == 64
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(art["model.safetensors"])
        f.flush()
        with safe_open(f.name, "pt") as st:
            assert json.loads(st.metadata()["model_config"])["hidden"] == [256, 256]


def test_same_spec_same_result(digits_run):
    again = run_experiment(make_spec(training__epochs=15))
    assert _without_timing(again.result) == _without_timing(digits_run.result)
    assert again.artifacts["model.safetensors"] == digits_run.artifacts["model.safetensors"]


def _interrupted_then_resumed(spec: dict, stop_after: int) -> tuple[dict, int]:
    saved: list[bytes] = []
    done: list[int] = []
    hooks = TrainHooks(on_epoch=lambda row: done.append(row["epoch"]),
                       should_stop=lambda: "lease_lost" if len(done) >= stop_after else None,
                       save_checkpoint=saved.append)
    with pytest.raises(TrainingStopped, match="lease_lost"):
        run_experiment(spec, hooks=hooks)
    assert len(saved) == stop_after
    resumed = run_experiment(spec, hooks=TrainHooks(load_checkpoint=lambda: saved[-1],
                                                    save_checkpoint=saved.append))
    return resumed.result, len(saved)


@pytest.mark.parametrize("over", [
    {"model__hidden": [64, 64], "model__dropout": 0.3},
    {"model__arch": "cnn", "model__hidden": [8, 8], "model__dropout": 0.2,
     "training__augment": True},
    {"model__arch": "transformer", "model__hidden": [16], "model__dropout": 0.1},
], ids=["mlp-dropout", "cnn-augment-dropout", "transformer-dropout"])
def test_resume_equals_uninterrupted(over):
    spec = make_spec(training__epochs=4, training__early_stopping=None, **over)
    full = run_experiment(spec).result
    resumed, n_saved = _interrupted_then_resumed(spec, stop_after=2)
    assert n_saved == 4 and resumed["timing"]["resumed_from_epoch"] == 2
    assert resumed["history"] == full["history"]
    assert resumed["test"] == full["test"]
    assert resumed["temperature_scaled"] == full["temperature_scaled"]
    assert resumed["projection"] == full["projection"]


def test_resume_with_early_stopping_state():
    spec = make_spec(training__epochs=6, model__hidden=[32],
                     training__early_stopping={"metric": "val_accuracy", "patience": 2})
    full = run_experiment(spec).result
    resumed, _ = _interrupted_then_resumed(spec, stop_after=3)
    assert _without_timing(resumed) == _without_timing(full)


def test_label_noise_and_synthetic_source():
    spec = make_spec(dataset={"source": "synthetic", "classes": 3, "features": 8,
                              "samples": 300, "separation": 2.0, "seed": 1},
                     label_noise=0.2, model__hidden=[32], training__epochs=3)
    r = run_experiment(spec).result
    assert r["dataset"]["n_classes"] == 3 and r["dataset"]["image_shape"] is None
    assert 0 < r["dataset"]["label_noise_changed"] <= round(0.2 * r["dataset"]["n_train"])


def test_upload_arrays_with_image_shape_run_a_cnn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4, 4)).astype(np.float32)
    y = np.arange(60) % 3
    X[y == 1, 0, :] += 3.0
    blob = np.load(__import__("io").BytesIO(to_npz_bytes(X.reshape(60, -1), y, (4, 4))))
    spec = make_spec(dataset={"source": "upload", "id": "ds_test"}, training__epochs=3,
                     model={"arch": "cnn", "hidden": [4], "dropout": 0.0})
    r = run_experiment(spec, arrays=(blob["X"], blob["y"]), class_names=["a", "b", "c"]).result
    assert r["dataset"]["image_shape"] == [4, 4] and r["dataset"]["class_names"] == ["a", "b", "c"]
    assert r["projection"]["class_names"] == ["a", "b", "c"]


def test_binary_variant_on_breast_cancer():
    spec = make_spec(dataset={"source": "builtin", "name": "breast_cancer"},
                     loss={"alpha": 0.1, "variant": "binary", "prior": None, "form": "ce"},
                     model__hidden=[16], training__epochs=20)
    out = run_experiment(spec)
    assert out.result["test"]["accuracy"] > 0.9 and out.result["projection"] is None
    assert set(out.artifacts) == {"model.safetensors", "model.json", "predictions.npz"}
    assert figure_names(out.result) == ["reliability.png"]  # no projection for one logit
    assert safetensors_load(out.artifacts["model.safetensors"])["head.weight"].shape == (1, 16)


def test_prior_variant_and_gru_on_digits():
    prior = [0.1] * 10
    spec = make_spec(loss={"alpha": 0.2, "variant": "prior", "prior": prior, "form": "kl"},
                     model={"arch": "gru", "hidden": [16], "dropout": 0.0}, training__epochs=3,
                     optimizer__lr=0.01)
    r = run_experiment(spec).result
    assert r["test"]["accuracy"] > 0.5 and len(r["history"]) == 3
    with pytest.raises(SpecError, match="prior"):
        run_experiment(make_spec(loss={"alpha": 0.1, "variant": "prior", "prior": [0.5, 0.5],
                                       "form": "ce"}))


def test_spec_errors():
    with pytest.raises(SpecError, match="'cnn'"):
        run_experiment(make_spec(dataset={"source": "builtin", "name": "iris"},
                                 model={"arch": "cnn", "hidden": [4], "dropout": 0.0}))
    with pytest.raises(SpecError, match="projection_classes"):
        run_experiment(make_spec(training__epochs=1, model__hidden=[8],
                                 calibration__projection_classes=[0, 1, 1]))


def test_a_partial_spec_reads_its_defaults_from_the_job_spec():
    """Blocks left out of a spec take JobSpec's defaults: the same config, data and fingerprint."""
    from core.ml.experiment import prepare_experiment
    from core.spec import JobSpec

    partial = {"training": {"epochs": 2}}
    resolved = JobSpec.model_validate(partial).model_dump(mode="json")
    a, b = prepare_experiment(partial), prepare_experiment(resolved)
    assert a.cfg == b.cfg and a.mcfg == b.mcfg
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint["split"] == resolved["split"]
    assert a.data.sha256 == b.data.sha256 and torch.equal(a.Xte, b.Xte)
    assert a.mcfg["arch"] == resolved["model"]["arch"]
