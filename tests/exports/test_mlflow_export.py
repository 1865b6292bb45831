"""Jobs and sweeps exported to a real `mlflow server`, read back through MLflow's own client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.exports.mlflow_server import mlflow_server
from tests.processes import Proc, free_port, start_worker, stop_process, wait_for_job
from tests.test_sweep_e2e import wait_for_sweep

SPEC: dict[str, Any] = {
    "dataset": {"source": "builtin", "name": "digits"},
    "model": {"arch": "mlp", "hidden": [32]},
    "loss": {"alpha": 0.1},
    "training": {"epochs": 3},
    "tags": {"team": "vision", "mlflow.parentRunId": "someone-elses-run"},
}
SETTLED = ("succeeded", "failed", "skipped")


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server for this module, stopped by its pid at the end."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def _worker(tmp_path: Path, **env: str) -> Proc:
    return start_worker(
        tmp_path / "worker.log", env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", **env}
    )


@pytest.fixture
def export_worker(db: str, redis_url: str, mlflow_url: str, tmp_path: Path) -> Iterator[Proc]:
    """A real worker exporting to the test's MLflow server."""
    proc = _worker(tmp_path, SOFTLABEL_MLFLOW_TRACKING_URI=mlflow_url)
    yield proc
    stop_process(proc)


def wait_for_export(client: Any, path: str, timeout: float = 240) -> dict[str, Any]:
    """Poll a job or sweep until its mlflow export has settled."""
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = client.get(path).json()
        if (doc.get("exports", {}).get("mlflow") or {}).get("status") in SETTLED:
            return doc["exports"]["mlflow"]
        time.sleep(0.3)
    raise AssertionError(f"{path}: the export did not settle in {timeout}s: {doc}")


def _artifact(mlflow: Any, run_id: str, name: str, tmp_path: Path) -> bytes:
    local = mlflow.download_artifacts(run_id, name, str(tmp_path))
    return Path(local).read_bytes()


def test_job_becomes_an_mlflow_run(
    client: Any, export_worker: Proc, mlflow_url: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    spec = {**SPEC, "tracking": {"mlflow": {"experiment": "digits-ls", "run_name": "a01"}}}
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    assert wait_for_job(client, job_id, timeout=240)["status"] == "succeeded"
    export = wait_for_export(client, f"/v1/jobs/{job_id}")
    assert export["status"] == "succeeded", export
    assert export["error"] is None and export["attempts"] == 1
    result = client.get(f"/v1/jobs/{job_id}/result").json()

    mlflow = MlflowClient(tracking_uri=mlflow_url)
    run = mlflow.get_run(export["run_id"])
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == "digits-ls" and run.info.run_name == "a01"
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["loss.alpha"] == "0.1" and params["model.hidden"] == "[32]"
    assert params["training.epochs"] == "3" and params["dataset.name"] == "digits"
    assert not any(k.startswith(("tags", "webhook_url", "tracking")) for k in params)
    tags = run.data.tags
    assert tags["softlabel.job_id"] == job_id and tags["team"] == "vision"
    assert "mlflow.parentRunId" not in tags  # a tenant's tag cannot hang the run elsewhere
    metrics = run.data.metrics
    for name in ("accuracy", "nll", "brier", "ece"):
        assert metrics[f"test.{name}"] == pytest.approx(result["test"][name], rel=1e-12)
    scaled = result["temperature_scaled"]
    assert metrics["temperature_scaled.temperature"] == pytest.approx(scaled["temperature"])
    assert metrics["temperature_scaled.test.ece"] == pytest.approx(scaled["test"]["ece"])
    history = mlflow.get_metric_history(run.info.run_id, "val_nll")
    logged = sorted((m.step, m.value) for m in history)
    assert [step for step, _ in logged] == [row["epoch"] for row in result["history"]]
    assert [value for _, value in logged] == pytest.approx(
        [r["val_nll"] for r in result["history"]]
    )
    names = {a.path for a in mlflow.list_artifacts(run.info.run_id)}
    assert {"reliability.png", "penultimate.png", "model.safetensors", "result.json"} <= names
    assert json.loads(_artifact(mlflow, run.info.run_id, "result.json", tmp_path)) == result
    model = client.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors").content
    assert _artifact(mlflow, run.info.run_id, "model.safetensors", tmp_path) == model


def test_sweep_becomes_a_parent_run_with_child_trials(
    client: Any, export_worker: Proc, mlflow_url: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    base = {k: v for k, v in SPEC.items() if k != "loss"}
    base["tracking"] = {"mlflow": {"experiment": "digits-sweep"}}
    sweep_id = client.post("/v1/sweeps", json={"base": base, "alphas": [0.0, 0.2]}).json()["id"]
    assert wait_for_sweep(client, sweep_id, timeout=300)["status"] == "succeeded"
    export = wait_for_export(client, f"/v1/sweeps/{sweep_id}")
    assert export["status"] == "succeeded", export

    mlflow = MlflowClient(tracking_uri=mlflow_url)
    parent = mlflow.get_run(export["run_id"])
    assert parent.data.tags["softlabel.sweep_id"] == sweep_id
    assert parent.data.params["alphas"] == "[0.0, 0.2]"
    report = client.get(f"/v1/sweeps/{sweep_id}/report").json()
    assert json.loads(_artifact(mlflow, parent.info.run_id, "report.json", tmp_path)) == report
    children = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    by_job = {run.data.tags["softlabel.job_id"]: run for run in children}
    trials = client.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"]
    assert set(by_job) == {t["id"] for t in trials} and len(by_job) == 2
    for trial in trials:
        child = by_job[trial["id"]]
        assert trial["exports"]["mlflow"]["run_id"] == child.info.run_id
        assert child.data.tags["softlabel.sweep_id"] == sweep_id
        assert child.data.params["loss.alpha"] == str(trial["spec"]["loss"]["alpha"])
        result = client.get(f"/v1/jobs/{trial['id']}/result").json()
        assert child.data.metrics["test.ece"] == pytest.approx(result["test"]["ece"])


def test_unreachable_server_fails_the_export_not_the_job(
    client: Any, db: str, redis_url: str, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = _worker(
        tmp_path,
        SOFTLABEL_MLFLOW_TRACKING_URI=nowhere,
        SOFTLABEL_MLFLOW_EXPORT_MAX_ATTEMPTS="3",
        SOFTLABEL_MLFLOW_EXPORT_BACKOFF_SECONDS="0.2",
    )
    try:
        job_id = client.post("/v1/jobs", json=SPEC).json()["id"]
        assert wait_for_job(client, job_id, timeout=240)["status"] == "succeeded"
        export = wait_for_export(client, f"/v1/jobs/{job_id}")
    finally:
        stop_process(proc)
    assert export["status"] == "failed" and export["attempts"] == 3, export
    assert export["run_id"] is None and "Connection" in export["error"]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["failure"] is None
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 200


def test_spec_tracking_without_a_server_is_skipped(
    client: Any, worker: Proc, tmp_path: Path
) -> None:
    spec = {**SPEC, "tracking": {"mlflow": {"experiment": "x"}}}
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    assert wait_for_job(client, job_id, timeout=240)["status"] == "succeeded"
    export = wait_for_export(client, f"/v1/jobs/{job_id}")
    assert export["status"] == "skipped"
    assert "SOFTLABEL_MLFLOW_TRACKING_URI" in export["error"]
    plain = client.post("/v1/jobs", json=SPEC).json()["id"]  # nothing asked, nothing set
    assert wait_for_job(client, plain, timeout=240)["exports"] == {}


@pytest.mark.parametrize(
    ("tracking", "field"),
    [
        ({"mlflow": {"experiment": "e", "tracking_uri": "http://evil:5000"}}, "tracking_uri"),
        ({"mlflow": {"run_name": "r"}}, "experiment"),
        ({"mlflow": {"experiment": "e\n"}}, "experiment"),
        ({"uri": "http://evil"}, "uri"),
    ],
)
def test_a_spec_names_an_experiment_never_a_server(
    client: Any, tracking: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/jobs", json={**SPEC, "tracking": tracking})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"].endswith(field) for e in response.json()["errors"]), response.json()
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_canceled_job_is_exported_as_killed(
    client: Any, export_worker: Proc, mlflow_url: str
) -> None:
    from mlflow.tracking import MlflowClient

    spec = {**SPEC, "training": {"epochs": 200}}
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")  # queued: the API ends it; running: the worker
    assert wait_for_job(client, job_id, timeout=240)["status"] == "canceled"
    export = wait_for_export(client, f"/v1/jobs/{job_id}")
    assert export["status"] == "succeeded", export
    run = MlflowClient(tracking_uri=mlflow_url).get_run(export["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["softlabel.status"] == "canceled"
