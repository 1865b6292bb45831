"""Fault tests with real processes: a job is never lost and produces exactly one result."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.ml.pause import PAUSE_ENV, RELEASE_ENV
from core.models import Artifact
from core.services import jobs as job_service
from core.storage import job_artifact_key
from tests.processes import Proc, start_api, start_worker
from tests.worker.faults import (
    SMALL,
    RedisServer,
    children_of,
    count_status,
    create_job,
    env_for,
    job_row,
    kill_worker,
    make_tenant,
    send,
    start_reconciler,
    start_worker_with,
    status_events,
    stop_all,
    wait_epoch,
    wait_status,
    wait_until,
)
from worker.checkpoints import CHECKPOINT_NAME

pytestmark = pytest.mark.slow

# A job that trains for a few seconds at most. "Mid-training" is not left to the machine's
# speed: tests hold it with the test pause (`held`) and release it when they have done the
# damage. A running job whose progress shows epoch k has a stored checkpoint of epoch >= k.
LONG: dict[str, Any] = {
    "model": {"hidden": [64]},
    "training": {"epochs": 30, "batch_size": 16, "early_stopping": None},
}
DONE = ("succeeded", "failed", "canceled")
# Training holds after epoch 1 until it is told to stop: a job that cannot finish, so time
# limits and cancels are driven by events, not by a guess at how fast this machine trains.
PAUSED = {PAUSE_ENV: "1"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis for the test (stopped by its pid at the end)."""
    server = RedisServer(tmp_path / "redis.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; all stopped by pid at the end."""
    started: list[Proc] = []
    yield started
    stop_all(*reversed(started))


@pytest.fixture
def tenant(db: str) -> str:
    """A tenant id."""
    return make_tenant()[0]


def held(tmp_path: Path, epoch: int) -> tuple[dict[str, str], Path]:
    """Worker env that holds training after `epoch`, and the file whose creation releases it."""
    release = tmp_path / "release-training"
    return {PAUSE_ENV: str(epoch), RELEASE_ENV: str(release)}, release


def worker_env(broker: RedisServer, **extra: str) -> dict[str, str]:
    """A worker's environment: the private broker, one torch thread."""
    return env_for(broker, OMP_NUM_THREADS="1", **extra)


def spawn_worker(tmp_path: Path, procs: list[Proc], env: dict[str, str], *extra: str) -> Proc:
    """Start a worker (its log next to the test's) and remember it."""
    log = tmp_path / f"worker-{len(procs)}.log"
    proc = start_worker(log, env=env, timeout=120)
    procs.append(proc)
    return proc


def spawn_reconciler(tmp_path: Path, procs: list[Proc], env: dict[str, str]) -> Proc:
    """Start `softlabel reconcile --every 0.5` and remember it."""
    proc = start_reconciler(tmp_path / f"reconciler-{len(procs)}.log", env)
    procs.append(proc)
    return proc


def assert_one_result(job_id: str) -> None:
    """Succeeded exactly once, with a result document."""
    job = job_row(job_id)
    assert job.status == "succeeded" and job.result is not None
    assert job.finished_at is not None and job.lease_owner is None
    assert count_status(job_id, "succeeded") == 1, status_events(job_id)
    assert sum(count_status(job_id, s) for s in ("failed", "canceled")) == 0


@pytest.mark.parametrize("victim", ["whole_worker", "pool_child"])
def test_sigkill_mid_training_resumes_from_checkpoint(
    victim: str, broker: RedisServer, procs: list[Proc], tenant: str, tmp_path: Path
) -> None:
    pause, release = held(tmp_path, 2)
    env = worker_env(broker, **pause)
    worker = spawn_worker(tmp_path, procs, env)
    spawn_reconciler(tmp_path, procs, env)
    job_id = create_job(tenant, LONG)
    send(broker, job_id)
    wait_epoch(job_id, 2, 120, logs=(worker,))  # held after epoch 2, its checkpoint stored
    if victim == "whole_worker":  # the machine or container died: nothing of it is left
        kill_worker(worker)
        release.touch()
        worker = spawn_worker(tmp_path, procs, env)
    else:  # the kernel's OOM killer took the training process; the main process lives on
        (child,) = children_of(worker.pid)
        os.kill(child, signal.SIGKILL)
        release.touch()
    job = wait_status(job_id, DONE, 180, logs=(worker,))
    assert_one_result(job_id)
    assert job.attempt == 2
    assert job.result is not None and job.result["attempt"] == 2
    assert job.result["timing"]["resumed_from_epoch"] == 2
    assert count_status(job_id, "running") == 2
    if victim == "whole_worker":  # an uninterrupted run of the same spec ends identically
        reference = create_job(tenant, LONG)
        send(broker, reference)
        ref = wait_status(reference, DONE, 180, logs=(worker,))
        assert ref.result is not None and ref.result["timing"]["resumed_from_epoch"] is None
        assert job.result["test"] == ref.result["test"]
        assert job.result["history"] == ref.result["history"]


def test_redis_down_at_submit_and_queue_lost(
    broker: RedisServer, procs: list[Proc], tmp_path: Path, api_key: str
) -> None:
    env = worker_env(broker)
    api = start_api(tmp_path / "api.log", env=env)
    procs.append(api)
    http = httpx.Client(base_url=api.info["url"], headers={"Authorization": f"Bearer {api_key}"})
    # A: accepted and enqueued, but no worker yet; then Redis dies and its queue with it.
    first = http.post("/v1/jobs", json=SMALL, timeout=30)
    assert first.status_code == 202, first.text
    assert broker.queue_length() == 1
    broker.stop()
    # B: accepted while Redis is down: committed in Postgres, not enqueued.
    t0 = time.monotonic()
    second = http.post("/v1/jobs", json=SMALL, timeout=30)
    assert second.status_code == 202, second.text
    assert time.monotonic() - t0 < 10
    ids = [first.json()["id"], second.json()["id"]]
    assert job_row(ids[1]).enqueued_at is None
    broker.start()
    assert broker.queue_length() == 0
    worker = spawn_worker(tmp_path, procs, env)
    spawn_reconciler(tmp_path, procs, env)
    for job_id in ids:
        wait_status(job_id, DONE, 120, logs=(worker,))
        assert_one_result(job_id)
        assert job_row(job_id).attempt == 1


def test_redis_restart_without_persistence_while_jobs_queued(
    broker: RedisServer, procs: list[Proc], tenant: str, tmp_path: Path
) -> None:
    pause, release = held(tmp_path, 1)
    env = worker_env(broker, **pause)
    worker = spawn_worker(tmp_path, procs, env)
    spawn_reconciler(tmp_path, procs, env)
    ids = [create_job(tenant, LONG)] + [create_job(tenant, SMALL) for _ in range(3)]
    for job_id in ids:
        send(broker, job_id)
    wait_epoch(ids[0], 1, 120, logs=(worker,))  # training, held: the others wait in Redis
    broker.stop()
    time.sleep(1.0)
    broker.start()
    release.touch()
    for job_id in ids:
        wait_status(job_id, DONE, 180, logs=(worker,))
        assert_one_result(job_id)


def test_same_task_delivered_twice_at_once(
    broker: RedisServer, procs: list[Proc], tenant: str, tmp_path: Path
) -> None:
    worker = start_worker_with(tmp_path / "worker.log", worker_env(broker), "--concurrency", "2")
    procs.append(worker)
    job_id = create_job(tenant, SMALL)
    send(broker, job_id)
    send(broker, job_id)
    wait_status(job_id, DONE, 120, logs=(worker,))
    assert_one_result(job_id)
    assert count_status(job_id, "running") == 1
    time.sleep(1.0)
    assert broker.queue_length() == 0
    assert count_status(job_id, "succeeded") == 1


def pg_cluster(action: str) -> None:
    """Start/stop/restart the real Postgres cluster."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True, timeout=120,
    )


def wait_pg(timeout: float = 60) -> None:
    """Wait until Postgres answers a query again."""

    def ping() -> bool:
        with session_scope() as s:
            return s.scalar(select(func.count()).select_from(Artifact)) is not None

    wait_until("postgres", ping, timeout)


def test_postgres_restart_while_training(
    broker: RedisServer, procs: list[Proc], tenant: str, tmp_path: Path
) -> None:
    pause, release = held(tmp_path, 2)
    env = worker_env(broker, **pause)
    worker = spawn_worker(tmp_path, procs, env)
    spawn_reconciler(tmp_path, procs, env)
    job_id = create_job(tenant, LONG)
    send(broker, job_id)
    wait_epoch(job_id, 2, 120, logs=(worker,))  # held mid-training (heartbeats go on)
    try:
        pg_cluster("restart")
    finally:
        try:
            wait_pg(30)
        except AssertionError:
            pg_cluster("start")
            wait_pg(60)
    release.touch()
    wait_status(job_id, DONE, 180, logs=(worker,))
    assert_one_result(job_id)
    # The same worker (and reconciler) go on working: no broken connection left behind.
    again = create_job(tenant, SMALL)
    send(broker, again)
    wait_status(again, DONE, 120, logs=(worker,))
    assert_one_result(again)


def test_worker_killed_max_attempts_times_fails_worker_lost(
    broker: RedisServer, procs: list[Proc], tenant: str, tmp_path: Path
) -> None:
    env = worker_env(broker, **PAUSED)  # every attempt is still training when it is killed
    worker = spawn_worker(tmp_path, procs, env)
    spawn_reconciler(tmp_path, procs, env)
    job_id = create_job(tenant, LONG, max_attempts=3)
    send(broker, job_id)
    for attempt in (1, 2, 3):

        def running(a: int = attempt) -> bool:
            job = job_row(job_id)
            return job.status == "running" and job.attempt == a

        wait_until(f"attempt {attempt} running", running, 120, logs=(worker,))
        for child in children_of(worker.pid):
            os.kill(child, signal.SIGKILL)
    job = wait_status(job_id, DONE, 60, logs=(worker,))
    assert job.status == "failed" and job.failure_reason == "worker_lost"
    assert job.attempt == 3 and job.result is None
    time.sleep(3)  # no loop: nothing claims it again
    assert job_row(job_id).status == "failed"
    assert count_status(job_id, "running") == 3
    assert count_status(job_id, "failed") == 1


def test_hard_time_limit_fails_with_timeout(
    broker: RedisServer, procs: list[Proc], tenant: str, tmp_path: Path
) -> None:
    limits = {"SOFTLABEL_TASK_SOFT_TIME_LIMIT": "600", "SOFTLABEL_TASK_TIME_LIMIT": "4"}
    env = worker_env(broker, **limits, **PAUSED)
    worker = spawn_worker(tmp_path, procs, env)
    spawn_reconciler(tmp_path, procs, env)
    job_id = create_job(tenant, {**LONG, "training": {**LONG["training"], "epochs": 200}})
    send(broker, job_id)
    job = wait_status(job_id, DONE, 90, logs=(worker,))
    assert job.status == "failed" and job.failure_reason == "timeout", job.failure_message
    assert job.result is None and count_status(job_id, "running") == 1


def test_soft_time_limit_fails_with_timeout_and_keeps_checkpoint(
    broker: RedisServer, procs: list[Proc], tenant: str, tmp_path: Path
) -> None:
    # The soft limit only has to outlast one small epoch and a checkpoint store (paced ≤ 1/s).
    limits = {"SOFTLABEL_TASK_SOFT_TIME_LIMIT": "12", "SOFTLABEL_TASK_TIME_LIMIT": "120"}
    env = worker_env(broker, **limits, **PAUSED)
    worker = spawn_worker(tmp_path, procs, env)
    job_id = create_job(tenant, {**LONG, "training": {**LONG["training"], "epochs": 200}})
    send(broker, job_id)
    wait_epoch(job_id, 1, 60, logs=(worker,))
    job = wait_status(job_id, DONE, 90, logs=(worker,))
    assert job.status == "failed" and job.failure_reason == "timeout", job.failure_message
    assert job.result is None and int(job.progress.get("epoch") or 0) >= 1
    with session_scope() as s:
        key = job_artifact_key(job_id, CHECKPOINT_NAME)
        assert s.scalar(select(func.count()).select_from(Artifact).where(Artifact.key == key))


def test_cancel_during_training(
    broker: RedisServer, procs: list[Proc], tenant: str, tmp_path: Path
) -> None:
    env = worker_env(broker, **PAUSED)
    worker = spawn_worker(tmp_path, procs, env)
    job_id = create_job(tenant, {**LONG, "training": {**LONG["training"], "epochs": 200}})
    send(broker, job_id)
    wait_epoch(job_id, 1, 120, logs=(worker,))
    t0 = time.monotonic()
    with session_scope() as s:
        job_service.cancel_job(s, tenant_id=tenant, job_id=job_id)
    job = wait_status(job_id, DONE, 5, logs=(worker,))
    assert time.monotonic() - t0 < 5
    assert job.status == "canceled" and job.result is None
    assert count_status(job_id, "canceled") == 1 and count_status(job_id, "succeeded") == 0
    with session_scope() as s:
        key = job_artifact_key(job_id, "model.safetensors")
        assert not s.scalar(select(func.count()).select_from(Artifact).where(Artifact.key == key))


def test_sigterm_returns_the_job_to_the_queue(
    broker: RedisServer, procs: list[Proc], tenant: str, tmp_path: Path
) -> None:
    pause, release = held(tmp_path, 1)
    env = worker_env(broker, **pause)
    worker = spawn_worker(tmp_path, procs, env)
    job_id = create_job(tenant, LONG)
    send(broker, job_id)
    wait_epoch(job_id, 1, 120, logs=(worker,))  # held mid-training
    os.kill(worker.pid, signal.SIGTERM)
    worker.popen.wait(timeout=30)
    job = job_row(job_id)
    assert job.status == "queued" and job.attempt == 1, status_events(job_id)
    assert any(e.get("released") for e in status_events(job_id))
    assert broker.queue_length() == 1  # re-enqueued by the releasing worker
    release.touch()
    spawn_worker(tmp_path, procs, env)
    job = wait_status(job_id, DONE, 120)
    assert_one_result(job_id)
    assert job.attempt == 1 and job.result is not None
    assert job.result["timing"]["resumed_from_epoch"] >= 1
