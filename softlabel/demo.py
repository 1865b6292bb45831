"""The embedded demo: API and worker as processes, an α comparison on digits over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

DEMO_DIR = Path("var/demo")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTLABEL_")}
    env["SOFTLABEL_VAR_DIR"] = str(DEMO_DIR.resolve())
    env["SOFTLABEL_ARTIFACT_DIR"] = str((DEMO_DIR / "artifacts").resolve())
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "softlabel.cli", *args]


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the API process exited during start-up")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not become ready in time")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text comparison table: one line per α."""
    head = f"{'alpha':>6} {'accuracy':>9} {'nll':>7} {'ece':>7} {'mean_conf':>9} {'T':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['alpha']:>6.2f} {r['accuracy']:>9.4f} {r['nll']:>7.4f} {r['ece']:>7.4f} "
            f"{r['mean_confidence']:>9.4f} {r['temperature'] or float('nan'):>6.2f}"
        )
    return "\n".join(lines)


def run_demo(alphas: list[float], *, epochs: int = 30) -> int:
    """Run the demo end to end; returns a process exit code."""
    env = _demo_env()
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(_cli("migrate"), env=env, check=True, stdout=subprocess.DEVNULL)
    created = subprocess.run(
        _cli("keys", "create", "--tenant", "demo", "--name", "demo"),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = httpx.Response(200, content=created.stdout).json()["key"]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(DEMO_DIR / "demo.log", "ab")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(_cli("worker"), env=env, stdout=log, stderr=log)
    api = subprocess.Popen(_cli("api", "--port", str(port)), env=env, stdout=log, stderr=log)
    try:
        _wait_ready(base, api)
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        print(
            f"Softlabel demo: API on {base}, worker started; training digits/MLP for "
            f"alpha in {alphas}"
        )
        job_ids = {}
        for alpha in alphas:
            spec = {
                "dataset": {"source": "builtin", "name": "digits"},
                "loss": {"alpha": alpha},
                "training": {"epochs": epochs},
                "tags": {"demo": "alpha-comparison"},
            }
            resp = client.post("/v1/jobs", json=spec)
            resp.raise_for_status()
            job_ids[alpha] = resp.json()["id"]
        rows = []
        out_dir = DEMO_DIR / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        for alpha, job_id in job_ids.items():
            while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in (
                "queued",
                "running",
            ):
                time.sleep(0.5)
            if job["status"] != "succeeded":
                print(f"alpha={alpha}: job {job_id} ended {job['status']}: {job['failure']}")
                return 1
            result = client.get(f"/v1/jobs/{job_id}/result").json()
            test = result["test"]
            scaled = result.get("temperature_scaled") or {}
            rows.append(
                {
                    "alpha": alpha,
                    **{k: test[k] for k in ("accuracy", "nll", "ece", "mean_confidence")},
                    "temperature": scaled.get("temperature"),
                }
            )
            for name in ("reliability.png", "penultimate.png"):
                art = client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
                if art.status_code == 200:
                    (out_dir / f"alpha_{alpha:g}_{name}").write_bytes(art.content)
        print(format_table(rows))
        print(f"Plots written to {out_dir.resolve()}")
        return 0
    finally:
        _stop(api)
        _stop(worker)
        log.close()
