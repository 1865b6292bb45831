"""A real `mlflow server` (SQLite backend, local artifact root) for the export tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.processes import free_port


@contextmanager
def mlflow_server(folder: Path, *, timeout: float = 240) -> Iterator[str]:
    """Start `mlflow server` on 127.0.0.1, yield its URL, stop it (and its children) by pid."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    args = [
        str(mlflow), "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(folder / "mlflow.log", "ab")  # noqa: SIM115 - owned by the child
    # its own session: the uvicorn and job-runner children stop with it (the group is its pid)
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError((folder / "mlflow.log").read_text()[-3000:])
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server not ready in time")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
