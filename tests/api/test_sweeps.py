"""Sweep routes against the real app and Postgres (no worker): validation, grouping, 404/409."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.models import Job, Sweep
from core.sweep_spec import stack_key

PROBLEM = "application/problem+json"
BASE = {"model": {"hidden": [32]}, "training": {"epochs": 2}}


def counts() -> tuple[int, int]:
    with session_scope() as s:
        jobs = int(s.scalar(select(func.count()).select_from(Job)) or 0)
        sweeps = int(s.scalar(select(func.count()).select_from(Sweep)) or 0)
    return jobs, sweeps


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"base": {"loss": {"alpha": 0.1}}, "alphas": [0, 0.1]}, "base.loss.alpha must not"),
        ({"base": {"training": {"seed": 3}}, "alphas": [0, 0.1]}, "seeds"),
        ({"alphas": []}, "alphas"),
        ({"alphas": [0.1, 0.1]}, "repeat"),
        ({"alphas": [1.0]}, "alphas"),
        ({"alphas": [0.1], "seeds": list(range(11))}, "seeds"),
        ({"alphas": [0.1], "objective": "test_ece"}, "objective"),
        ({"alphas": [0.1], "axes": {"model.arch": ["mlp", "vgg"]}}, "model.arch"),
        ({"alphas": [0.1], "axes": {"label_noise": [0.1, 1.5]}}, "label_noise"),
        ({"alphas": [0.1], "axes": {"optimizer.weight_decay": [-1]}}, "weight_decay"),
        ({"alphas": [0.1], "axes": {"dropout": [0.1]}}, "dropout"),
        ({"alphas": [0.1], "status": "succeeded"}, "status"),
        (
            {
                "base": {"dataset": {"source": "builtin", "name": "iris"}},
                "alphas": [0.1],
                "axes": {"model.arch": ["mlp", "cnn"]},
            },
            "'cnn'",
        ),
        (
            {
                "base": {"model": {"hidden": [30]}},
                "alphas": [0.1],
                "axes": {"model.arch": ["mlp", "transformer"]},
            },
            "'transformer'",
        ),
        ({"alphas": [i / 40 for i in range(20)], "seeds": [0, 1, 2, 3]}, "80 trials"),
    ],
)
def test_invalid_sweeps_are_422_and_store_nothing(client: Any, body: dict, needle: str) -> None:
    resp = client.post("/v1/sweeps", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert needle in resp.text
    assert counts() == (0, 0)


def test_too_many_trials_names_count_and_limit(client: Any) -> None:
    body = {
        "base": BASE,
        "alphas": [0, 0.1, 0.2, 0.3],
        "seeds": list(range(10)),
        "axes": {"model.arch": ["mlp", "linear"]},
    }
    resp = client.post("/v1/sweeps", json=body)
    assert resp.status_code == 422
    problem = resp.json()
    assert problem["n_trials"] == 80 and problem["max_trials"] == 64
    assert "80 trials" in problem["detail"] and "limit of 64" in problem["detail"]


def test_submit_stores_one_job_per_trial_grouped_for_stacking(client: Any) -> None:
    body = {
        "base": {**BASE, "tags": {"team": "vision"}},
        "alphas": [0, 0.1],
        "seeds": [0, 1],
        "axes": {"model.arch": ["mlp", "linear"]},
    }
    resp = client.post("/v1/sweeps", json=body)
    assert resp.status_code == 202, resp.text
    sweep = resp.json()
    sweep_id = sweep["id"]
    assert sweep_id.startswith("swp_") and resp.headers["location"] == f"/v1/sweeps/{sweep_id}"
    assert sweep["status"] == "queued" and sweep["n_trials"] == 8 and sweep["groups"] == 2
    assert sweep["progress"] == {"done": 0, "total": 8, "by_status": {"queued": 8}}
    assert sweep["request"]["axes"] == {"model.arch": ["mlp", "linear"]}
    assert "alpha" not in sweep["request"]["base"]["loss"]
    assert sweep["links"]["jobs"] == f"/v1/jobs?sweep_id={sweep_id}"

    jobs = client.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 50}).json()["items"]
    assert len(jobs) == 8 and all(j["sweep_id"] == sweep_id for j in jobs)
    grid = {
        (j["spec"]["model"]["arch"], j["spec"]["loss"]["alpha"], j["spec"]["training"]["seed"])
        for j in jobs
    }
    assert grid == {(a, al, s) for a in ("mlp", "linear") for al in (0.0, 0.1) for s in (0, 1)}
    for j in jobs:
        assert j["tags"]["sweep_id"] == sweep_id and j["tags"]["team"] == "vision"
        assert j["tags"]["arch"] == j["spec"]["model"]["arch"]
        assert j["tags"]["alpha"] == f"{j['spec']['loss']['alpha']:g}"
        assert j["tags"]["seed"] == str(j["spec"]["training"]["seed"])
    assert len({stack_key(j["spec"]) for j in jobs}) == 2

    # Filtering the job list by a trial tag works too.
    tagged = client.get("/v1/jobs", params={"tag": f"sweep_id:{sweep_id}", "limit": 50}).json()
    assert len(tagged["items"]) == 8

    page = client.get("/v1/sweeps").json()
    assert [s["id"] for s in page["items"]] == [sweep_id]

    report = client.get(f"/v1/sweeps/{sweep_id}/report")
    assert report.status_code == 409 and "0 of 8" in report.json()["detail"]

    canceled = client.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert canceled.status_code == 202
    assert canceled.json()["progress"]["by_status"] == {"canceled": 8}
    again = client.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert again.status_code in (202, 409)


def test_stack_key_of_core_spec_matches_the_trainer() -> None:
    from core.ml import sweep as ml_sweep

    spec = {
        "loss": {"alpha": 0.1, "variant": "uniform"},
        "training": {"seed": 3, "epochs": 2},
        "tags": {"a": "b"},
        "webhook_url": None,
        "model": {"arch": "mlp"},
    }
    assert stack_key(spec) == ml_sweep.stack_key(spec)


@pytest.mark.parametrize(("change", "stacks"), [
    ({}, True),
    ({"model": {"arch": "linear"}}, True),
    ({"model": {"arch": "cnn", "hidden": [8]}}, False),  # BatchNorm buffers
    ({"model": {"arch": "mlp", "hidden": [32], "dropout": 0.2}}, False),
    ({"training": {"epochs": 2, "schedule": {"name": "cosine"}}}, False),
    ({"loss": {"method": "focal", "gamma": 2.0}}, False),
])
def test_may_stack_is_the_trainers_rule_without_torch(change: dict, stacks: bool) -> None:
    from core.ml import sweep as ml_sweep
    from core.ml.experiment import prepare_experiment
    from core.spec import JobSpec
    from core.sweep_spec import may_stack

    spec = JobSpec.model_validate({**BASE, **change}).resolved()
    assert may_stack(spec) is stacks
    assert ml_sweep.can_stack(prepare_experiment(spec)) is stacks


def test_trials_that_cannot_stack_are_queued_one_task_each(client: Any) -> None:
    body = {"base": {**BASE, "model": {"arch": "cnn", "hidden": [8]}, "training": {"epochs": 1}},
            "alphas": [0.0, 0.1, 0.2]}
    resp = client.post("/v1/sweeps", json=body)
    assert resp.status_code == 202, resp.text
    assert resp.json()["n_trials"] == 3 and resp.json()["groups"] == 3


def test_other_tenants_sweep_is_404(client: Any) -> None:
    resp = client.post("/v1/sweeps", json={"base": BASE, "alphas": [0.1]})
    assert resp.status_code == 202
    sweep_id = resp.json()["id"]
    from core.services.tenants import create_api_key

    with session_scope() as s:
        _, other = create_api_key(s, tenant_name="other")
    headers = {"Authorization": f"Bearer {other}"}
    mine = client.get("/v1/sweeps/swp_doesnotexist", headers=headers)
    theirs = client.get(f"/v1/sweeps/{sweep_id}", headers=headers)
    assert mine.status_code == theirs.status_code == 404
    assert mine.json()["detail"].replace("swp_doesnotexist", "X") == theirs.json()[
        "detail"
    ].replace(sweep_id, "X")
    assert client.get(f"/v1/sweeps/{sweep_id}/report", headers=headers).status_code == 404


def test_idempotency_key_replays_the_sweep(client: Any) -> None:
    body = {"base": BASE, "alphas": [0.0, 0.1]}
    headers = {"Idempotency-Key": "sweep-once"}
    first = client.post("/v1/sweeps", json=body, headers=headers)
    again = client.post("/v1/sweeps", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert counts() == (2, 1)
    other = client.post("/v1/sweeps", json={**body, "alphas": [0.2]}, headers=headers)
    assert other.status_code == 422
