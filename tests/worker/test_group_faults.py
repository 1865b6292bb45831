"""A stacked sweep group whose worker is SIGKILLed resumes from its group checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.db import session_scope
from core.ml import group_checkpoint
from core.ml.pause import PAUSE_ENV
from core.models import Artifact, JobEvent
from core.storage import get_artifact
from tests.processes import Proc, start_api
from tests.worker.faults import RedisServer, job_row, kill_worker, wait_until
from tests.worker.test_faults import (  # noqa: F401 - fixtures
    DONE,
    assert_one_result,
    broker,
    procs,
    spawn_reconciler,
    spawn_worker,
    worker_env,
)
from worker.group_checkpoints import GROUP_CHECKPOINT_NAME

pytestmark = pytest.mark.slow
EPOCHS, HELD_AT = 5, 2
BASE: dict[str, Any] = {
    "model": {"arch": "mlp", "hidden": [32]},
    "training": {"epochs": EPOCHS, "batch_size": 64, "early_stopping": None},
}


def stored_checkpoint_epoch(sweep_id: str) -> int | None:
    """The epoch of the sweep's stored group checkpoint, or None."""
    with session_scope() as session:
        keys = session.scalars(select(Artifact.key).where(
            Artifact.key.like(f"sweeps/{sweep_id}/groups/%/{GROUP_CHECKPOINT_NAME}"))).all()
        if not keys:
            return None
        found = get_artifact(session, key=keys[0])
    return None if found is None else int(group_checkpoint.decode(found[1])["meta"]["epoch"])


def progress_epochs(job_id: str) -> list[int]:
    """The epochs of the job's progress events, oldest first."""
    with session_scope() as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                JobEvent.kind == "progress").order_by(JobEvent.id))
        return [int(e.data["epoch"]) for e in rows]


def test_sigkill_mid_stacked_group_resumes_from_the_group_checkpoint(
    broker: RedisServer, procs: list[Proc], tmp_path: Path, api_key: str  # noqa: F811
) -> None:
    env = worker_env(broker)
    api = start_api(tmp_path / "api.log", env=env)
    procs.append(api)
    held = spawn_worker(tmp_path, procs, {**env, PAUSE_ENV: str(HELD_AT)})  # holds after 2
    spawn_reconciler(tmp_path, procs, env)
    http = httpx.Client(base_url=api.info["url"], headers={"Authorization": f"Bearer {api_key}"})
    sub = http.post("/v1/sweeps", json={"base": BASE, "alphas": [0.0, 0.1, 0.2]}, timeout=30)
    assert sub.status_code == 202 and sub.json()["groups"] == 1, sub.text
    sweep_id = sub.json()["id"]
    ids = [j["id"] for j in http.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"]]
    wait_until("group checkpoint", lambda: stored_checkpoint_epoch(sweep_id) == HELD_AT, 180,
               logs=(held,))
    wait_until("progress of both epochs", lambda: all(  # written off the training thread
        progress_epochs(j) == list(range(1, HELD_AT + 1)) for j in ids), 60, logs=(held,))
    kill_worker(held)  # nothing of it is left; the reconciler requeues the expired leases
    fresh = spawn_worker(tmp_path, procs, env)
    for job_id in ids:
        wait_until("trial done", lambda j=job_id: job_row(j).status in DONE, 240, logs=(fresh,))
    for job_id in ids:
        assert_one_result(job_id)
        job = job_row(job_id)
        assert job.attempt == 2 and job.result is not None
        assert job.result["timing"]["resumed_from_epoch"] == HELD_AT
        assert [r["epoch"] for r in job.result["history"]] == list(range(1, EPOCHS + 1))
        # every epoch's progress once: attempt 2 went on at epoch 3, it did not start over
        assert progress_epochs(job_id) == list(range(1, EPOCHS + 1))
    # deleted once every trial's result is stored (just after the last commit)
    wait_until("checkpoint deleted", lambda: stored_checkpoint_epoch(sweep_id) is None, 60,
               logs=(fresh,))
    assert "resumed from the group checkpoint after epoch 2" in fresh.log_text()
