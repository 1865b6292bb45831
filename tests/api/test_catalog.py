"""GET /v1/catalog: complete, consistent with the spec, and enough to build valid specs."""

from __future__ import annotations

from typing import Any

import torch

from core.ml.calibration import calibration_report
from core.spec import ARCHS, BUILTIN_NAMES, OPTIMIZERS, VARIANTS


def test_catalog_lists_datasets_archs_variants_optimizers_and_metrics(client: Any) -> None:
    resp = client.get("/v1/catalog")
    assert resp.status_code == 200
    cat = resp.json()
    datasets = {d["name"]: d for d in cat["datasets"]}
    assert tuple(datasets) == BUILTIN_NAMES
    digits = datasets["digits"]
    assert (digits["n_samples"], digits["n_features"], digits["n_classes"]) == (1797, 64, 10)
    assert digits["image_shape"] == [8, 8] and digits["compatible_archs"] == list(ARCHS)
    assert datasets["iris"]["compatible_archs"] == ["linear", "mlp"]
    assert tuple(a["name"] for a in cat["architectures"]) == ARCHS
    assert {a["name"]: a["view"] for a in cat["architectures"]}["gru"] == "sequence"
    assert tuple(v["name"] for v in cat["loss_variants"]) == VARIANTS
    assert tuple(o["name"] for o in cat["optimizers"]) == OPTIMIZERS
    assert "device_unavailable" in cat["failure_reasons"] and "diverged" in cat["failure_reasons"]
    assert cat["upload"]["formats"] == ["csv", "parquet", "npz"]
    assert cat["upload"]["max_bytes"] > 0


def test_catalog_metric_names_are_the_ones_the_result_holds(client: Any) -> None:
    names = {m["name"] for m in client.get("/v1/catalog").json()["metrics"]["test"]}
    probs = torch.softmax(torch.randn(50, 4), dim=1)
    report = calibration_report(
        probs, torch.randint(0, 4, (50,)), 15, logits=torch.randn(50, 4), alpha=0.1
    )
    assert names <= set(report), names - set(report)
    assert {"accuracy", "ece", "nll", "brier", "mce", "classwise_ece"} <= names


def test_every_catalog_combination_is_a_valid_spec_and_the_rest_are_422(client: Any) -> None:
    cat = client.get("/v1/catalog").json()
    for ds in cat["datasets"]:
        for arch in cat["architectures"]:
            spec = {
                "dataset": {"source": "builtin", "name": ds["name"]},
                "model": {"arch": arch["name"], "hidden": [8]},
                "training": {"epochs": 1},
            }
            resp = client.post("/v1/jobs", json=spec)
            expected = 202 if arch["name"] in ds["compatible_archs"] else 422
            assert resp.status_code == expected, (ds["name"], arch["name"], resp.text)


def test_catalog_needs_a_key(client: Any) -> None:
    resp = client.get("/v1/catalog", headers={"Authorization": ""})
    assert resp.status_code == 401 and "WWW-Authenticate" in resp.headers
