"""Issue 13 through the API: loss.method specs, the catalog, a loss.method sweep on a worker."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from tests.test_sweep_e2e import wait_for_sweep

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    ("loss", "field", "words"),
    [
        ({"method": "label_smooth"}, "loss.method", "label_smoothing"),
        ({"method": "focal", "gamma": -1}, "loss.gamma", "greater than or equal to 0"),
        ({"method": "margin", "margin": 0}, "loss.margin", "greater than 0"),
        ({"method": "margin", "margin": -3}, "loss.margin", "greater than 0"),
        ({"method": "focal", "beta": 0.2}, "loss", "loss.beta applies only to"),
        ({"method": "focal", "alpha": 0.1}, "loss", "loss.alpha applies only to"),
        ({"method": "margin", "variant": "binary"}, "loss", "loss.variant and loss.form"),
    ],
)
def test_bad_method_spec_is_422_naming_the_field(client: Any, loss: dict, field: str,
                                                 words: str) -> None:
    resp = client.post("/v1/jobs", json={"loss": loss})
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    fields = [e["field"] for e in body["errors"]]
    assert field in fields, fields
    assert words in resp.text
    assert client.get("/v1/jobs").json()["items"] == []


def test_bad_posthoc_is_422(client: Any) -> None:
    resp = client.post("/v1/jobs", json={"calibration": {"posthoc": ["temperature", "beta"]}})
    assert resp.status_code == 422
    assert any(e["field"].startswith("calibration.posthoc") for e in resp.json()["errors"])
    resp = client.post("/v1/jobs", json={"calibration": {"posthoc": ["isotonic", "isotonic"]}})
    assert resp.status_code == 422 and "must not repeat" in resp.text


def test_method_defaults_resolve_and_catalog_lists_them(client: Any) -> None:
    resp = client.post("/v1/jobs", json={"loss": {"method": "focal_adaptive"}})
    assert resp.status_code == 202, resp.text
    loss = resp.json()["spec"]["loss"]
    assert loss["method"] == "focal_adaptive" and loss["gamma"] == 3.0 and loss["alpha"] == 0.0
    assert loss["margin"] is None and loss["beta"] is None
    plain = client.post("/v1/jobs", json={}).json()["spec"]
    assert plain["loss"]["method"] == "label_smoothing" and plain["loss"]["alpha"] == 0.1
    assert plain["calibration"]["posthoc"] == ["temperature", "vector_scaling", "isotonic"]
    catalog = client.get("/v1/catalog").json()
    methods = {m["name"]: m for m in catalog["loss_methods"]}
    assert set(methods) == {"label_smoothing", "margin", "focal", "focal_adaptive",
                            "confidence_penalty"}
    assert methods["margin"]["parameters"] == {"margin": 10.0, "margin_weight": 0.1}
    posthoc = {m["name"]: m["default"] for m in catalog["posthoc_methods"]}
    assert posthoc["isotonic"] and not posthoc["platt"]
    tests = {m["name"] for m in catalog["metrics"]["test"]}
    assert {"smooth_ece", "ece_debiased_l2", "ece_sweep", "ci95"} <= tests


def test_sweep_over_loss_method_with_a_real_worker(client: Any, worker: Any) -> None:
    body = {
        "base": {"dataset": {"source": "builtin", "name": "iris"},
                 "model": {"arch": "mlp", "hidden": [16]},
                 "training": {"epochs": 3, "early_stopping": None},
                 "calibration": {"posthoc": ["temperature", "isotonic"]}},
        "alphas": [0.0, 0.1],
        "seeds": [0, 1],
        "axes": {"loss.method": ["label_smoothing", "focal", "margin"], "loss.gamma": [1.0, 3.0]},
    }
    submitted = client.post("/v1/sweeps", json=body)
    assert submitted.status_code == 202, submitted.text
    # LS × 2 α, focal × 2 γ, margin × 1 (α and γ do not apply), each × 2 seeds
    assert submitted.json()["n_trials"] == 10
    sweep = wait_for_sweep(client, submitted.json()["id"], timeout=400)
    assert sweep["status"] == "succeeded", sweep
    report = client.get(f"/v1/sweeps/{sweep['id']}/report").json()
    rows = report["rows"]
    seen = {(r["method"], r["parameter"]["name"], r["parameter"]["value"]) for r in rows}
    assert seen == {("label_smoothing", "alpha", 0.0), ("label_smoothing", "alpha", 0.1),
                    ("focal", "gamma", 1.0), ("focal", "gamma", 3.0),
                    ("margin", "margin", 10.0)}
    for r in rows:
        assert r["n_succeeded"] == 2
        assert r["test"]["smooth_ece"]["n"] == 2 and r["test"]["smooth_ece"]["std"] is not None
        assert set(r["posthoc"]) == {"temperature", "isotonic"}
    pair = report["recommended_pair"]
    assert pair["posthoc"] in ("none", "temperature", "isotonic")
    assert pair["training"]["method"] in ("label_smoothing", "focal", "margin")
    assert "validation" in pair["chosen_on"] and pair["objective"] == "val_nll"
    # the pair minimises the validation scores the rows report
    scores = [r["baseline_val"]["nll"]["mean"] for r in rows] + [
        d["val_cv"]["nll"]["mean"] for r in rows for d in r["posthoc"].values()]
    assert pair["value"] == pytest.approx(min(scores))
    for name in ("metrics_vs_gamma_focal.png", "metrics_vs_alpha_label_smoothing.png",
                 "reliability_overlay_margin.png"):
        assert name in report["plots"], report["plots"]
        assert client.get(report["plots"][name]).content.startswith(b"\x89PNG")
    job_id = rows[2]["job_ids"][0]
    result = client.get(f"/v1/jobs/{job_id}/result").json()
    link = result["artifacts"]["predictions.npz"]
    npz = np.load(io.BytesIO(client.get(link).content), allow_pickle=False)
    assert npz["test_logits"].shape == (result["dataset"]["n_test"], 3)
    assert np.array_equal(np.sort(np.concatenate([npz["val_index"], npz["test_index"]])),
                          np.unique(np.concatenate([npz["val_index"], npz["test_index"]])))
    # our test accuracy is recomputable from the raw predictions
    acc = float((npz["test_logits"].argmax(1) == npz["test_labels"]).mean())
    assert acc == pytest.approx(result["test"]["accuracy"])
