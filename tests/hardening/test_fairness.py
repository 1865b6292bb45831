"""Fair shares between tenants: one tenant's queue of jobs cannot starve another's.

A real Celery worker with 2 slots and a per-tenant cap of 1 running job while others wait.
Training holds after epoch 1 (the test pause), so "still running" is a state, not a race.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.db import session_scope
from core.ml.pause import PAUSE_ENV
from core.services import tenants
from tests.processes import stop_process
from tests.worker.faults import job_row, start_worker_with, wait_until

SPEC = {"model": {"hidden": [16]}, "training": {"epochs": 50, "early_stopping": None}}


def test_a_queue_of_one_tenant_cannot_starve_another(client: Any, tmp_path: Path) -> None:
    with session_scope() as s:
        _, key_b = tenants.create_api_key(s, tenant_name="beta")
    ids_a = [client.post("/v1/jobs", json=SPEC).json()["id"] for _ in range(4)]
    auth_b = {"Authorization": f"Bearer {key_b}"}
    id_b = client.post("/v1/jobs", json=SPEC, headers=auth_b).json()["id"]
    env = {PAUSE_ENV: "1", "SOFTLABEL_MAX_RUNNING_JOBS_PER_TENANT": "1"}
    worker = start_worker_with(tmp_path / "worker.log", env, "--concurrency", "2")
    try:
        wait_until("beta's job running", lambda: job_row(id_b).status == "running", 120,
                   logs=(worker,))
        statuses = [job_row(i).status for i in ids_a]
        assert statuses.count("running") == 1 and statuses.count("queued") == 3, statuses
        # with nobody else waiting the cap does not hold acme back: both slots are its
        assert client.post(f"/v1/jobs/{id_b}/cancel", headers=auth_b).status_code == 202
        wait_until("acme on both slots",
                   lambda: [job_row(i).status for i in ids_a].count("running") == 2, 120,
                   logs=(worker,))
        for job_id in ids_a:
            client.post(f"/v1/jobs/{job_id}/cancel")
        wait_until("all ended", lambda: all(
            job_row(i).status in ("canceled", "succeeded", "failed") for i in [*ids_a, id_b]
        ), 120, logs=(worker,))
    finally:
        client.post(f"/v1/jobs/{id_b}/cancel", headers=auth_b)
        for job_id in ids_a:
            client.post(f"/v1/jobs/{job_id}/cancel")
        stop_process(worker)


def _trial_statuses(sweep_ids: list[str]) -> list[list[str]]:
    from sqlalchemy import select

    from core.models import Job

    with session_scope() as s:
        return [sorted(s.scalars(select(Job.status).where(Job.sweep_id == sid)).all())
                for sid in sweep_ids]


def test_a_stacked_sweep_group_counts_as_one_worker(client: Any, tmp_path: Path) -> None:
    """Shares are counted in workers and sweep groups claim fairly too: with a cap of 2 and
    4 slots, acme runs two stacked groups (6 trials, 2 workers) and beta two jobs; the third
    of each waits (counting trials as workers would leave acme one group)."""
    with session_scope() as s:
        _, key_b = tenants.create_api_key(s, tenant_name="beta")
    body = {"base": SPEC, "alphas": [0.0, 0.1, 0.2]}
    sweeps = [client.post("/v1/sweeps", json=body).json()["id"] for _ in range(3)]
    auth_b = {"Authorization": f"Bearer {key_b}"}
    ids_b = [client.post("/v1/jobs", json=SPEC, headers=auth_b).json()["id"] for _ in range(3)]
    env = {PAUSE_ENV: "1", "SOFTLABEL_MAX_RUNNING_JOBS_PER_TENANT": "2"}
    worker = start_worker_with(tmp_path / "worker.log", env, "--concurrency", "4")

    def shares() -> tuple[int, int]:
        groups = sum(statuses == ["running"] * 3 for statuses in _trial_statuses(sweeps))
        return groups, [job_row(i).status for i in ids_b].count("running")

    try:
        wait_until("every slot taken", lambda: sum(shares()) == 4, 180, logs=(worker,))
        assert shares() == (2, 2), (_trial_statuses(sweeps), [job_row(i).status for i in ids_b])
    finally:
        for job_id in ids_b:
            client.post(f"/v1/jobs/{job_id}/cancel", headers=auth_b)
        for sweep_id in sweeps:
            client.post(f"/v1/sweeps/{sweep_id}/cancel")
        wait_until("all ended", lambda: all(
            status in ("canceled", "succeeded", "failed")
            for statuses in _trial_statuses(sweeps) for status in statuses
        ) and all(job_row(i).status in ("canceled", "failed") for i in ids_b), 120,
            logs=(worker,))
        stop_process(worker)
