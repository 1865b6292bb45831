"""Start and stop the real processes tests run against (by their own pid)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


class Proc:
    """A started process and its log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path, **info: Any) -> None:
        self.popen = popen
        self.log = log
        self.info = info

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def log_text(self) -> str:
        """What the process has written so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def cli(*args: str) -> list[str]:
    """The softlabel CLI as a command line."""
    return [sys.executable, "-m", "softlabel.cli", *args]


def _spawn(args: list[str], log: Path, env: dict[str, str] | None, **info: Any) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child
    full_env = {**os.environ, **(env or {})}
    popen = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    handle.close()
    return Proc(popen, log, **info)


def wait_worker_ready(proc: Proc, *, timeout: float, stop: Callable[[Proc], None]) -> Proc:
    """Wait until Celery reports the worker ready; on failure stop it with `stop` and raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if " ready." in proc.log_text():
            return proc
        if proc.popen.poll() is not None:
            raise RuntimeError(f"worker exited during start-up:\n{proc.log_text()[-3000:]}")
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"worker not ready in {timeout}s:\n{proc.log_text()[-3000:]}")


def start_worker(log: Path, *, env: dict[str, str] | None = None, timeout: float = 60) -> Proc:
    """Start a worker and wait until Celery reports it ready."""
    name = f"w{uuid.uuid4().hex[:8]}@%h"
    proc = _spawn(cli("worker", "--loglevel", "info", "--hostname", name), log, env, name=name)
    return wait_worker_ready(proc, timeout=timeout, stop=stop_process)


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_api(log: Path, *, env: dict[str, str] | None = None, timeout: float = 60) -> Proc:
    """Start uvicorn serving the API and wait for /healthz."""
    port = free_port()
    proc = _spawn(cli("api", "--port", str(port)), log, env, url=f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"API exited during start-up:\n{proc.log_text()[-3000:]}")
        try:
            if httpx.get(f"{proc.info['url']}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError("API not ready in time")


def stop_process(proc: Proc, *, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process by its pid: the signal, then SIGKILL if it does not exit."""
    if proc.popen.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)


def wait_for_job(
    client: Any,
    job_id: str,
    *,
    statuses: tuple[str, ...] = ("succeeded", "failed", "canceled"),
    timeout: float = 120,
) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("status") in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout}s: {job}")
