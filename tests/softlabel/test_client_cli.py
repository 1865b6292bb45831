"""The Python client and the CLI against a real uvicorn API, Postgres, Redis and a worker."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from softlabel.client import Client, Conflict, InvalidRequest, NotFound, Unauthorized
from tests.processes import Proc, cli, start_api, start_worker, stop_process

FAST = {"model": {"hidden": [32]}, "training": {"epochs": 3}}


@pytest.fixture
def stack(db: str, redis_url: str, api_key: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    api = start_api(tmp_path / "api.log")
    worker = start_worker(tmp_path / "worker.log")
    try:
        yield {"url": api.info["url"], "key": api_key, "api": api, "worker": worker}
    finally:
        stop_process(worker)
        stop_process(api)


def run_cli(
    stack: dict[str, Any], *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOFTLABEL_API_URL": stack["url"], "SOFTLABEL_API_KEY": stack["key"]}
    return subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=timeout)


def test_client_and_cli_end_to_end(stack: dict[str, Any], tmp_path: Path) -> None:
    with Client(stack["url"], stack["key"]) as sl:
        # client: submit (idempotent), follow the event stream, typed result
        job = sl.jobs.submit(FAST, idempotency_key="client-1")
        assert sl.jobs.submit(FAST, idempotency_key="client-1").id == job.id
        kinds = [(e.kind, e.data.get("status")) for e in sl.jobs.events(job.id)]
        assert kinds[0] == ("status", "queued") and kinds[-1] == ("status", "succeeded")
        assert sum(k == "progress" for k, _ in kinds) == 3
        done = sl.jobs.wait(job.id, stream=True)
        assert done.succeeded and done.done
        result = sl.jobs.result(job.id)
        assert result.job_id == job.id and 0 <= result.ece <= 1 and 0 < result.accuracy <= 1
        assert sl.jobs.artifact(job.id, "reliability.png").startswith(b"\x89PNG")
        assert [j.id for j in sl.jobs.list(status="succeeded")] == [job.id]
        with pytest.raises(NotFound):
            sl.jobs.get("job_nope")
        with pytest.raises(InvalidRequest) as bad:
            sl.jobs.submit({"loss": {"alpha": 3}})
        assert bad.value.problem["errors"][0]["field"].startswith("loss.alpha")
        with pytest.raises(Conflict):
            sl.jobs.cancel(job.id)
    with Client(stack["url"], "sl_wrong") as anon, pytest.raises(Unauthorized):
        anon.jobs.get(job.id)

    # CLI: submit --wait → 0, result table/json, status, cancel of a finished job → 2
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(FAST))
    ok = run_cli(stack, "submit", str(spec), "--wait", "--quiet")
    assert ok.returncode == 0, ok.stderr
    cli_job = json.loads(ok.stdout)
    assert cli_job["status"] == "succeeded"
    table = run_cli(stack, "result", cli_job["id"], "--format", "table")
    assert table.returncode == 0 and "ece" in table.stdout and "T-scaled" in table.stdout
    as_json = run_cli(stack, "result", cli_job["id"], "--format", "json")
    assert json.loads(as_json.stdout)["job_id"] == cli_job["id"]
    assert run_cli(stack, "status", cli_job["id"]).returncode == 0
    assert run_cli(stack, "cancel", cli_job["id"]).returncode == 2

    # a job that fails (no CUDA here) → 1; a canceled one → 3; bad input → 2
    failing = tmp_path / "cuda.json"
    failing.write_text(json.dumps({**FAST, "training": {"epochs": 3, "device": "cuda"}}))
    failed = run_cli(stack, "submit", str(failing), "--wait", "--quiet")
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    long_spec = tmp_path / "long.json"
    long_spec.write_text(json.dumps({**FAST, "training": {"epochs": 400, "early_stopping": None}}))
    env = {**os.environ, "SOFTLABEL_API_URL": stack["url"], "SOFTLABEL_API_KEY": stack["key"]}
    waiting = subprocess.Popen(cli("submit", str(long_spec), "--wait", "--quiet"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = Proc(waiting, tmp_path / "none.log")
    try:
        with Client(stack["url"], stack["key"]) as sl:
            deadline = time.monotonic() + 30
            jobs: list[Any] = []
            while time.monotonic() < deadline and not jobs:
                jobs = list(sl.jobs.list(status="running")) + list(sl.jobs.list(status="queued"))
                time.sleep(0.2)
            assert jobs
            sl.jobs.cancel(jobs[0].id)
        assert waiting.wait(timeout=30) == 3
    finally:
        stop_process(proc)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    assert run_cli(stack, "submit", str(bad_json)).returncode == 2
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"loss": {"alpha": 5}}))
    rejected = run_cli(stack, "submit", str(invalid))
    assert rejected.returncode == 2 and "loss.alpha" in rejected.stderr
    assert run_cli(stack, "status", "job_nope").returncode == 2
