"""The MLflow run documents built from a job (hand-worked cases, no server)."""

from __future__ import annotations

import json

from core.exports.mlflow import final_metrics, history_steps, job_run, spec_params, tenant_tags


def test_params_are_the_flattened_spec_without_tags_webhook_or_tracking() -> None:
    spec = {
        "loss": {"alpha": 0.1, "variant": "uniform"},
        "model": {"hidden": [128, 64]},
        "early_stopping": None,
        "tags": {"a": "b"},
        "webhook_url": "https://hooks.example/x",
        "tracking": {"mlflow": {"experiment": "e"}},
    }
    assert spec_params(spec) == {
        "loss.alpha": "0.1",
        "loss.variant": "uniform",
        "model.hidden": "[128, 64]",
        "early_stopping": "null",
    }


def test_tenant_tags_cannot_use_reserved_namespaces() -> None:
    tags = {"team": "vision", "mlflow.parentRunId": "x", "softlabel.job_id": "y", "a$b": "1"}
    assert tenant_tags(tags) == {"team": "vision", "a_b": "1"}


def test_final_metrics_and_history() -> None:
    result = {
        "test": {"accuracy": 0.9, "ece": 0.05, "n": 100, "bins": [1, 2], "ok": True,
                 "logit_gap": {"mean": 2.0, "median": None}, "mce": float("nan")},
        "temperature_scaled": {"temperature": 0.5, "test": {"ece": 0.01}},
        "posthoc": {"vector": {"test": {"ece": 0.02}}},
        "best_epoch": 3,
    }  # fmt: skip
    assert final_metrics(result) == {
        "test.accuracy": 0.9,
        "test.ece": 0.05,
        "test.n": 100.0,
        "test.logit_gap.mean": 2.0,
        "temperature_scaled.temperature": 0.5,
        "temperature_scaled.test.ece": 0.01,
        "posthoc.vector.test.ece": 0.02,
        "best_epoch": 3.0,
    }
    history = [{"epoch": 1, "val_nll": 0.5, "lr": 0.1}, {"epoch": 2, "val_nll": 0.4, "x": None}]
    assert history_steps(history) == [("val_nll", 0.5, 1), ("lr", 0.1, 1), ("val_nll", 0.4, 2)]


def test_job_run_document() -> None:
    job = {
        "id": "job_1", "status": "failed", "sweep_id": "swp_1", "spec": {"loss": {"alpha": 0.2}},
        "tags": {"team": "nlp"}, "result": None, "failure_reason": "diverged",
        "artifacts": {"model.safetensors": b"m"},
    }  # fmt: skip
    doc = job_run(job)
    assert doc.name == "job_1" and doc.status == "FAILED"
    assert doc.tags == {
        "team": "nlp",
        "softlabel.job_id": "job_1",
        "softlabel.status": "failed",
        "softlabel.sweep_id": "swp_1",
        "softlabel.failure_reason": "diverged",
    }
    assert doc.artifacts == {"model.safetensors": b"m"} and doc.metrics == {}
    done = job_run({**job, "status": "succeeded", "result": {"test": {"ece": 0.1}}}, run_name="r")
    assert done.status == "FINISHED" and done.name == "r"
    assert json.loads(done.artifacts["result.json"]) == {"test": {"ece": 0.1}}
