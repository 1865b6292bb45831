"""Fault-injection helpers: a private Redis, jobs straight in Postgres, process trees."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from core.config import Settings
from core.db import session_scope
from core.models import Job, JobEvent
from core.queue import QUEUE_TRAINING, TASK_RUN_JOB, make_celery
from core.services import jobs as job_service
from core.services import tenants
from core.spec import JobSpec
from tests.processes import Proc, _spawn, cli, free_port, stop_process, wait_worker_ready

SMALL: dict[str, Any] = {"model": {"hidden": [32]}, "training": {"epochs": 3}}


def spec_of(overrides: dict[str, Any]) -> dict[str, Any]:
    """The resolved spec the API would store for `overrides`."""
    return JobSpec.model_validate(overrides).resolved()


from tests.services import redis_server_binary  # noqa: E402 - next to its one use


class RedisServer:
    """A private redis-server without persistence, owned (and stopped) by the test."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING."""
        handle = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.popen = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def stop(self) -> None:
        """Kill it (SIGKILL: no shutdown save, the queue is gone)."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        self.popen = None

    def queue_length(self) -> int:
        """Messages waiting in the training queue."""
        return int(redis.Redis(port=self.port).llen(QUEUE_TRAINING))


def env_for(broker: RedisServer, **extra: str) -> dict[str, str]:
    """Environment of a subprocess that uses the private broker."""
    return {"SOFTLABEL_BROKER_URL": broker.url, **extra}


def make_tenant() -> tuple[str, str]:
    """A tenant and a raw API key."""
    with session_scope() as s:
        key, raw = tenants.create_api_key(s, tenant_name="acme")
        return key.tenant_id, raw


def create_job(tenant_id: str, overrides: dict[str, Any], *, max_attempts: int = 3) -> str:
    """Commit a queued job exactly as the API does (not yet handed to the broker)."""
    with session_scope() as s:
        job = job_service.create_job(
            s, tenant_id=tenant_id, spec=spec_of(overrides), max_attempts=max_attempts
        )
        return job.id


def send(broker: RedisServer, job_id: str, *, mark: bool = True) -> None:
    """Publish the training task for a job to the private broker."""
    app = make_celery(Settings(broker_url=broker.url))
    app.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE_TRAINING)
    if mark:
        with session_scope() as s:
            job_service.mark_enqueued(s, job_ids=[job_id])


def job_row(job_id: str) -> Job:
    """The job row, detached."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def status_events(job_id: str) -> list[dict[str, Any]]:
    """The data of the job's status events, oldest first."""
    with session_scope() as s:
        rows = s.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
            .order_by(JobEvent.id)
        )
        return [dict(e.data) for e in rows]


def count_status(job_id: str, status: str) -> int:
    """How many transitions into `status` the job has."""
    return sum(1 for e in status_events(job_id) if e.get("status") == status)


def wait_until(
    what: str, check: Callable[[], Any], timeout: float, *, logs: tuple[Proc, ...] = ()
) -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - e.g. the database is restarting
            value = None
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.log}:\n{p.log_text()[-4000:]}" for p in logs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")


def wait_status(
    job_id: str, statuses: tuple[str, ...], timeout: float, logs: tuple[Proc, ...] = ()
) -> Job:
    """Wait until the job is in one of `statuses`."""
    return wait_until(
        f"{job_id} in {statuses}",
        lambda: (j := job_row(job_id)).status in statuses and j,
        timeout,
        logs=logs,
    )


def wait_epoch(job_id: str, epoch: int, timeout: float, logs: tuple[Proc, ...] = ()) -> Job:
    """Wait until the running job reports progress of at least `epoch`."""
    return wait_until(
        f"{job_id} at epoch {epoch}",
        lambda: (
            (j := job_row(job_id)).status == "running"
            and int((j.progress or {}).get("epoch") or 0) >= epoch
            and j
        ),
        timeout,
        logs=logs,
    )


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def kill_worker(proc: Proc) -> None:
    """SIGKILL a worker's main process and then its pool children (by their pids)."""
    kids = children_of(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in kids):
        if time.monotonic() > deadline:
            raise AssertionError(f"pool children {kids} still alive")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def start_reconciler(log: Path, env: dict[str, str], every: float = 0.5) -> Proc:
    """The reconciler as its own process (`softlabel reconcile --every`)."""
    return _spawn(cli("reconcile", "--every", str(every)), log, env)


def stop_all(*procs: Proc | None) -> None:
    """Stop processes by their pids (TERM, then KILL), children of workers included."""
    for proc in procs:
        if proc is None:
            continue
        kids = children_of(proc.pid) if proc.popen.poll() is None else []
        stop_process(proc, timeout=15)
        for pid in kids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start_worker_with(log: Path, env: dict[str, str], *args: str, timeout: float = 120) -> Proc:
    """Start a worker with extra CLI arguments and wait until Celery reports it ready."""
    proc = _spawn(cli("worker", "--loglevel", "info", *args), log, env)
    return wait_worker_ready(proc, timeout=timeout, stop=stop_all)
