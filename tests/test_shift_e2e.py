"""Issue 16 end to end: a model.arch × split.train_fraction sweep and a job with shifts,
through the real app, Postgres, Redis and a Celery worker (tiny: a few epochs on digits)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from core.ml.data import split_indices
from tests.processes import wait_for_job
from tests.test_sweep_e2e import check_plots, wait_for_sweep

SHIFTS = [{"name": "translate", "intensities": [1, 3]}, {"name": "gaussian_noise",
                                                         "intensities": [2]}]


def test_arch_by_fraction_sweep_and_a_job_under_shift(client: Any, worker: Any) -> None:
    job_spec = {"model": {"arch": "mlp", "hidden": [64]}, "training": {"epochs": 5},
                "split": {"train_fraction": 0.5}, "evaluation": {"shifts": SHIFTS, "seed": 3}}
    job_id = client.post("/v1/jobs", json=job_spec).json()["id"]
    body = {"base": {"model": {"hidden": [16]}, "training": {"epochs": 2},
                     "evaluation": {"shifts": [{"name": "translate", "intensities": [2]}]}},
            "alphas": [0.0, 0.1], "seeds": [0, 1], "target_accuracy": 0.5,
            "axes": {"model.arch": ["mlp", "linear"], "split.train_fraction": [0.1, 1.0]}}
    submitted = client.post("/v1/sweeps", json=body)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["groups"] == 4

    job = wait_for_job(client, job_id, timeout=150)
    assert job["status"] == "succeeded", job
    result = client.get(f"/v1/jobs/{job_id}/result").json()
    y = load_digits().target
    per_class = np.bincount(y[split_indices(y, 0.15, 0.15, 0)[0]])
    assert result["dataset"]["n_train"] == int(np.maximum(1, np.round(0.5 * per_class)).sum())
    assert result["dataset"]["n_val"] == 269 and result["dataset"]["n_test"] == 269
    shift = result["shift"]
    assert shift["seed"] == 3 and shift["temperature"] == result["temperature_scaled"][
        "temperature"]
    assert shift["clean"]["before"]["accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert shift["clean"]["before"]["ece"] == pytest.approx(result["test"]["ece"])
    assert shift["clean"]["after"]["ece"] == pytest.approx(
        result["temperature_scaled"]["test"]["ece"], abs=1e-6)
    names = [(p["name"], [r["intensity"] for r in p["intensities"]])
             for p in shift["perturbations"]]
    assert names == [("translate", [1, 3]), ("gaussian_noise", [2])]
    translate3 = shift["perturbations"][0]["intensities"][1]
    assert translate3["applied"]["pixels"] == 3 and translate3["applied"]["seed"] == 3
    assert sum(translate3["applied"]["direction_counts"].values()) == result["dataset"]["n_test"]
    assert translate3["before"]["accuracy"] < shift["clean"]["before"]["accuracy"]
    # Temperature scaling does not change the argmax: same accuracy before and after.
    assert translate3["after"]["accuracy"] == translate3["before"]["accuracy"]

    sweep = wait_for_sweep(client, submitted.json()["id"], timeout=300)
    assert sweep["status"] == "succeeded", sweep
    report = client.get(f"/v1/sweeps/{sweep['id']}/report").json()
    jobs = client.get("/v1/jobs", params={"sweep_id": sweep["id"], "limit": 100}).json()["items"]
    results = {}
    for j in jobs:
        key = (j["spec"]["model"]["arch"], j["spec"]["split"]["train_fraction"],
               j["spec"]["loss"]["alpha"], j["spec"]["training"]["seed"])
        results[key] = client.get(f"/v1/jobs/{j['id']}/result").json()
    assert len(results) == 16
    block = report["learning_curves"]
    assert block["target_accuracy"] == 0.5 and len(block["curves"]) == 4
    for curve in block["curves"]:
        arch, alpha = curve["context"]["model.arch"], curve["alpha"]
        assert [p["train_fraction"] for p in curve["points"]] == [0.1, 1.0]
        for p in curve["points"]:
            accs = [results[(arch, p["train_fraction"], alpha, s)]["test"]["accuracy"]
                    for s in (0, 1)]
            assert p["accuracy"]["mean"] == pytest.approx(np.mean(accs))
            assert p["n_train"] == results[(arch, p["train_fraction"], alpha, 0)]["dataset"][
                "n_train"]
        assert curve["points"][0]["n_train"] < curve["points"][1]["n_train"]
    assert {g["size"] for g in block["arch_gaps"]} == {"smallest", "largest"}
    assert len(report["shift"]) == 8  # (arch, fraction) × α, one perturbation
    curve = report["shift"][0]
    assert [p["intensity"] for p in curve["points"]] == [0, 2]
    plots = set(report["plots"])
    assert {"learning_curves.png", "shift_ece_translate.png"} <= plots
    check_plots(client, report, plots)
