"""docs/pipelines.md: its shell, Python, GitHub Actions, Airflow and Kubernetes recipes run."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.processes import ROOT, Proc, start_api, start_worker, stop_process

DOC = ROOT / "docs" / "pipelines.md"


def blocks(language: str) -> list[str]:
    """The doc's fenced code blocks in `language`, in order."""
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def pipeline_servers(
    database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """One real API and one real worker for the module's recipes, stopped by pid."""
    logs = tmp_path_factory.mktemp("pipelines")
    worker = start_worker(logs / "worker.log")
    api = start_api(logs / "api.log")
    yield api
    stop_process(api)
    stop_process(worker)


@pytest.fixture
def pipeline_env(
    db: str, api_key: str, pipeline_servers: Proc, tmp_path: Path
) -> dict[str, str]:
    """Environment of a pipeline step: a real API, its key, and `softlabel` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "softlabel"  # the CLI of this tree (a console script would be /work/main's)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m softlabel.cli "$@"\n')
    shim.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    return {
        **os.environ,
        "PATH": path,
        "PYTHONPATH": str(ROOT),
        "SOFTLABEL_API_URL": pipeline_servers.info["url"],
        "SOFTLABEL_API_KEY": api_key,
    }


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a recipe the way a CI runner would (its own working directory)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def jobs(env: dict[str, str]) -> list[dict[str, Any]]:
    """The tenant's jobs, through the API."""
    headers = {"Authorization": f"Bearer {env['SOFTLABEL_API_KEY']}"}
    response = httpx.get(f"{env['SOFTLABEL_API_URL']}/v1/jobs", headers=headers, timeout=30)
    return list(response.json()["items"])


def test_shell_recipe_trains_once_per_key_and_gates(
    pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    (script,) = blocks("bash")
    env = {**pipeline_env, "PIPELINE_RUN_ID": "4711"}
    first = run(["bash", "-c", script], env, tmp_path / "first")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "job succeeded" in first.stdout and "ece=" in first.stdout
    again = run(["bash", "-c", script], env, tmp_path / "again")  # the step retried
    assert again.returncode == 0, again.stderr
    ids = {json.loads((tmp_path / d / "job.json").read_text())["id"] for d in ("first", "again")}
    assert len(ids) == 1 and [j["id"] for j in jobs(env)] == list(ids)

    bad = run(["bash", "-c", script], {**env, "SOFTLABEL_API_KEY": "sk_wrong"}, tmp_path / "bad")
    assert bad.returncode == 2 and "bad input (exit 2)" in bad.stdout


def test_python_recipe(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    (script,) = [b for b in blocks("python") if "softlabel.client" in b]
    env = {**pipeline_env, "PIPELINE_RUN_ID": "4712"}
    done = run([sys.executable, "-c", script], env, tmp_path / "py")
    assert done.returncode == 0, done.stderr
    (job,) = jobs(env)
    assert job["status"] == "succeeded" and done.stdout.startswith(f"{job['id']}: ece=")


def test_github_actions_step(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    workflow = yaml.safe_load(blocks("yaml")[0])
    steps = workflow["jobs"]["train"]["steps"]
    (step,) = [s for s in steps if s.get("id") == "train"]
    outputs = tmp_path / "github_output"
    env = {**pipeline_env, "GITHUB_RUN_ID": "99", "GITHUB_RUN_ATTEMPT": "1",
           "GITHUB_OUTPUT": str(outputs)}  # fmt: skip
    done = run([step["shell"], "-c", step["run"]], env, tmp_path / "gha")
    assert done.returncode == 0, done.stdout + done.stderr
    (job,) = jobs(env)
    assert outputs.read_text() == f"job_id={job['id']}\n"
    assert json.loads((tmp_path / "gha" / "result.json").read_text())["job_id"] == job["id"]


def test_airflow_task_command(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    (dag,) = [b for b in blocks("python") if "BashOperator" in b]
    assigned = [n for n in ast.parse(dag).body if isinstance(n, ast.Assign)]
    command = next(
        ast.literal_eval(n.value) for n in assigned if n.targets[0].id == "SOFTLABEL_TRAIN"
    )  # type: ignore[attr-defined]
    rendered = command.replace("{{ run_id }}", "manual__2026-12-01T20:00:00")  # what Jinja does
    done = run(["bash", "-c", rendered], pipeline_env, tmp_path / "airflow")
    assert done.returncode == 0, done.stderr
    (job,) = jobs(pipeline_env)
    assert done.stdout.strip().splitlines()[-1] == job["id"]  # the XCom value


def test_kubernetes_job_container(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    manifest = yaml.safe_load(blocks("yaml")[1])
    assert manifest["kind"] == "Job"
    rule = manifest["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["onExitCodes"]["values"] == [1, 2, 3]  # failed, bad input, canceled: no retry
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    env = {**pipeline_env, "JOB_NAME": manifest["metadata"]["name"]}
    done = run([*container["command"], *container["args"]], env, tmp_path / "k8s")
    assert done.returncode == 0, done.stderr
    (job,) = jobs(env)
    assert json.loads(done.stdout)["id"] == job["id"] and job["status"] == "succeeded"
