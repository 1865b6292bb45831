"""α sweeps end to end: real app, Postgres, Redis and a Celery worker training stacked trials."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from tests.api.test_cancel_events import parse_sse
from tests.processes import wait_for_job

BASE = {
    "dataset": {"source": "builtin", "name": "digits"},
    "model": {"arch": "mlp", "hidden": [32]},
    "training": {"epochs": 4},
}
ALPHAS = [0.0, 0.1, 0.2]
SEEDS = [0, 1]
TEST_SCALARS = ("accuracy", "nll", "brier", "ece", "mce", "mean_confidence", "mean_entropy")
# Stacked (vmapped) matmuls are not bit-identical to unbatched ones (core/ml/sweep.py):
# a trial's metrics equal its standalone job's within float tolerance.
REL_TOL, ABS_TOL = 1e-5, 1e-6  # measured: about 1e-9 on CPU
PNG = b"\x89PNG\r\n\x1a\n"


def wait_for_sweep(client: Any, sweep_id: str, timeout: float = 150) -> dict[str, Any]:
    """Poll GET /v1/sweeps/{id} until the sweep has a final status."""
    deadline = time.monotonic() + timeout
    sweep: dict[str, Any] = {}
    while time.monotonic() < deadline:
        sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
        if sweep["status"] in ("succeeded", "failed", "canceled"):
            return sweep
        time.sleep(0.3)
    raise AssertionError(f"sweep {sweep_id} did not finish in {timeout}s: {sweep}")


def best_row(result: dict[str, Any]) -> dict[str, Any]:
    rows = {h["epoch"]: h for h in result["history"]}
    return rows.get(result["best_epoch"], result["history"][-1])


def pareto_by_hand(points: dict[float, tuple[float, float]]) -> set[float]:
    front = set()
    for a, (acc, ece) in points.items():
        beaten = any(
            acc2 >= acc and ece2 <= ece and (acc2 > acc or ece2 < ece)
            for b, (acc2, ece2) in points.items()
            if b != a
        )
        if not beaten:
            front.add(a)
    return front


def check_plots(client: Any, report: dict[str, Any], names: set[str]) -> None:
    assert set(report["plots"]) == names
    for link in report["plots"].values():
        resp = client.get(link)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        assert resp.content.startswith(PNG) and len(resp.content) > 5000


def test_alpha_sweep_and_arch_axis_end_to_end(client: Any, worker: Any) -> None:
    body = {"base": BASE, "alphas": ALPHAS, "seeds": SEEDS, "objective": "val_nll"}
    submitted = client.post("/v1/sweeps", json=body)
    assert submitted.status_code == 202, submitted.text
    sweep_id = submitted.json()["id"]
    assert submitted.json()["groups"] == 1  # α × seeds share everything else: one stacked group
    arch_body = {
        "base": {**BASE, "training": {"epochs": 3}},
        "alphas": [0.0, 0.1],
        "axes": {"model.arch": ["mlp", "linear"]},
    }
    arch = client.post("/v1/sweeps", json=arch_body)
    assert arch.status_code == 202 and arch.json()["groups"] == 2
    # The same spec as one trial, as a standalone job.
    standalone_spec = {**BASE, "loss": {"alpha": 0.1}, "training": {**BASE["training"], "seed": 1}}
    standalone = client.post("/v1/jobs", json=standalone_spec).json()["id"]

    sweep = wait_for_sweep(client, sweep_id)
    assert sweep["status"] == "succeeded", sweep
    assert sweep["progress"] == {"done": 6, "total": 6, "by_status": {"succeeded": 6}}

    jobs = client.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"]
    assert len(jobs) == 6
    assert all(j["sweep_id"] == sweep_id and j["status"] == "succeeded" for j in jobs)
    assert all(j["progress"]["epoch"] >= 1 and j["progress"]["epochs"] == 4 for j in jobs)
    results = {}
    for j in jobs:
        key = (j["spec"]["loss"]["alpha"], j["spec"]["training"]["seed"])
        results[key] = client.get(f"/v1/jobs/{j['id']}/result").json()
        assert results[key]["job_id"] == j["id"]
        # every epoch's row reached the trial, in order, before it finished (written off the
        # training thread, all trials per transaction)
        events = parse_sse(client.get(f"/v1/jobs/{j['id']}/events").text)
        epochs = [e["data"]["epoch"] for e in events if e["event"] == "progress"]
        assert epochs == [h["epoch"] for h in results[key]["history"]]
        assert j["progress"]["epoch"] == results[key]["history"][-1]["epoch"]
    assert set(results) == {(a, s) for a in ALPHAS for s in SEEDS}

    report = client.get(f"/v1/sweeps/{sweep_id}/report").json()
    assert report["status"] == "succeeded" and report["objective"] == "val_nll"
    assert report["trials"] == {"total": 6, "succeeded": 6}
    rows = {r["alpha"]: r for r in report["rows"]}
    assert sorted(rows) == ALPHAS
    for alpha, row in rows.items():
        assert row["n_succeeded"] == 2 and row["seeds"] == SEEDS
        for metric in TEST_SCALARS:
            values = np.array([results[(alpha, s)]["test"][metric] for s in SEEDS])
            assert row["test"][metric]["mean"] == pytest.approx(values.mean(), rel=1e-9)
            assert row["test"][metric]["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        temps = [results[(alpha, s)]["temperature_scaled"]["temperature"] for s in SEEDS]
        assert row["temperature_scaled"]["temperature"]["mean"] == pytest.approx(np.mean(temps))
        lo, hi = row["ece_ci95"]
        assert 0.0 <= lo < hi <= 1.0
        assert hi - lo < 0.2

    # The recommended α, computed here from the trials' validation histories only.
    val_nll = {a: np.mean([best_row(results[(a, s)])["val_nll"] for s in SEEDS]) for a in ALPHAS}
    expected = min(ALPHAS, key=lambda a: (val_nll[a], a))
    assert report["recommended"]["alpha"] == expected
    assert report["recommended"]["value"] == pytest.approx(val_nll[expected])
    assert sweep_id and client.get(f"/v1/sweeps/{sweep_id}").json()["recommended_alpha"] == expected

    # The Pareto front of (mean test accuracy ↑, mean test ECE ↓), by hand.
    points = {
        a: (
            float(np.mean([results[(a, s)]["test"]["accuracy"] for s in SEEDS])),
            float(np.mean([results[(a, s)]["test"]["ece"] for s in SEEDS])),
        )
        for a in ALPHAS
    }
    assert {p["alpha"] for p in report["pareto_front"]} == pareto_by_hand(points)
    assert {a for a, r in rows.items() if r["pareto"]} == pareto_by_hand(points)
    check_plots(client, report, {"metrics_vs_alpha.png", "reliability_overlay.png"})

    # A trial equals the same spec run as a standalone job, within float tolerance.
    alone = wait_for_job(client, standalone, timeout=60)
    assert alone["status"] == "succeeded" and alone["sweep_id"] is None
    alone_result = client.get(f"/v1/jobs/{standalone}/result").json()
    trial = results[(0.1, 1)]
    assert trial["best_epoch"] == alone_result["best_epoch"]
    for metric in ("accuracy", "nll", "brier", "ece", "mean_confidence"):
        assert math.isclose(
            trial["test"][metric], alone_result["test"][metric], rel_tol=REL_TOL, abs_tol=ABS_TOL
        ), metric
    for h_trial, h_alone in zip(trial["history"], alone_result["history"], strict=True):
        assert h_trial["val_nll"] == pytest.approx(h_alone["val_nll"], rel=REL_TOL, abs=ABS_TOL)

    # The model.arch axis: separate groups, rows and plots per architecture.
    arch_sweep = wait_for_sweep(client, arch.json()["id"])
    assert arch_sweep["status"] == "succeeded", arch_sweep
    arch_report = client.get(f"/v1/sweeps/{arch_sweep['id']}/report").json()
    contexts = {(r["context"]["model.arch"], r["alpha"]) for r in arch_report["rows"]}
    assert contexts == {(a, al) for a in ("mlp", "linear") for al in (0.0, 0.1)}
    by_context = {r["context"]["model.arch"]: r for r in arch_report["recommended"]["by_context"]}
    assert set(by_context) == {"mlp", "linear"}
    check_plots(
        client,
        arch_report,
        {
            f"{kind}_model.arch-{name}.png"
            for kind in ("metrics_vs_alpha", "reliability_overlay")
            for name in ("mlp", "linear")
        },
    )


def test_batchnorm_trials_run_as_plain_jobs_and_finish_the_sweep(client: Any, worker: Any) -> None:
    body = {"base": {**BASE, "model": {"arch": "cnn", "hidden": [8]}, "training": {"epochs": 1}},
            "alphas": [0.0, 0.2]}
    submitted = client.post("/v1/sweeps", json=body)
    assert submitted.status_code == 202 and submitted.json()["groups"] == 2  # one task each
    sweep = wait_for_sweep(client, submitted.json()["id"])
    assert sweep["status"] == "succeeded" and sweep["progress"]["done"] == 2
    report = client.get(f"/v1/sweeps/{sweep['id']}/report").json()
    assert {r["alpha"] for r in report["rows"]} == {0.0, 0.2}
    jobs = client.get("/v1/jobs", params={"sweep_id": sweep["id"]}).json()["items"]
    results = [client.get(f"/v1/jobs/{j['id']}/result").json() for j in jobs]
    assert all(math.isfinite(r["test"]["ece"]) and r["test"]["ci95"] for r in results)


def test_sweep_cancel_stops_running_trials(client: Any, worker: Any) -> None:
    body = {
        "base": {
            "dataset": {"source": "builtin", "name": "digits"},
            "model": {"arch": "mlp", "hidden": [256, 256]},
            "training": {"epochs": 1000, "early_stopping": None},
        },
        "alphas": [0.0, 0.1],
    }
    sweep_id = client.post("/v1/sweeps", json=body).json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/sweeps/{sweep_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the sweep did not start"
        time.sleep(0.2)
    jobs = client.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"]
    while not all(j["progress"] for j in jobs):  # both trials are training
        assert time.monotonic() < deadline, jobs
        time.sleep(0.2)
        jobs = client.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"]
    canceled = client.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceling"
    sweep = wait_for_sweep(client, sweep_id, timeout=30)
    assert sweep["status"] == "canceled"
    assert sweep["progress"]["by_status"] == {"canceled": 2}
    report = client.get(f"/v1/sweeps/{sweep_id}/report").json()
    assert report["status"] == "canceled" and report["recommended"] is None
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 409


def test_trials_run_one_by_one_still_complete_the_sweep(client: Any) -> None:
    """The reconciler re-enqueues lost trials as single run_job tasks: that path ends the sweep."""
    from core.config import get_settings
    from core.db import session_scope
    from core.services.sweeps import finalize_sweep_if_done
    from worker.group_runner import execute_group
    from worker.runner import execute_job

    body = {"base": {**BASE, "training": {"epochs": 2}}, "alphas": [0.0, 0.1]}
    sweep_id = client.post("/v1/sweeps", json=body).json()["id"]
    ids = [j["id"] for j in client.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"]]
    for job_id in ids:
        assert execute_job(job_id, settings=get_settings()) == "succeeded"
    assert execute_group(ids, settings=get_settings()) == {}  # a late group delivery: no-op
    sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
    assert sweep["status"] == "succeeded" and sweep["progress"]["done"] == 2
    report = client.get(f"/v1/sweeps/{sweep_id}/report").json()
    assert {r["alpha"] for r in report["rows"]} == {0.0, 0.1}
    check_plots(client, report, {"metrics_vs_alpha.png", "reliability_overlay.png"})
    with session_scope() as session:  # the report is written once
        assert not finalize_sweep_if_done(session, sweep_id=sweep_id)
