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


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The table rows of a sweep report: seed-mean test metrics and temperature per α."""
    rows = []
    for r in sorted(report["rows"], key=lambda r: r["alpha"]):
        test = r["test"]
        rows.append(
            {
                "alpha": r["alpha"],
                **{k: test[k]["mean"] for k in ("accuracy", "nll", "ece", "mean_confidence")},
                "temperature": r["temperature_scaled"]["temperature"]["mean"],
            }
        )
    return rows


def _wait_sweep(client: httpx.Client, sweep_id: str) -> dict[str, Any]:
    last = -1
    while True:
        sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
        done, total = sweep["progress"]["done"], sweep["progress"]["total"]
        if done != last:
            print(f"  {done}/{total} trials done ({sweep['status']})", flush=True)
            last = done
        if sweep["status"] in ("succeeded", "failed", "canceled"):
            return sweep
        time.sleep(0.5)


def _save_plots(client: httpx.Client, sweep_id: str, report: dict[str, Any], out: Path) -> None:
    """The sweep's comparison plots, and each α's reliability and projection plots."""
    for name, link in (report.get("plots") or {}).items():
        resp = client.get(link)
        if resp.status_code == 200:
            (out / name).write_bytes(resp.content)
    for row in report["rows"]:
        job_id = row["job_ids"][0]
        for name in ("reliability.png", "penultimate.png"):
            art = client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
            if art.status_code == 200:
                (out / f"alpha_{row['alpha']:g}_{name}").write_bytes(art.content)


def serve_until_interrupted(api: subprocess.Popen[bytes], url: str, key: str) -> None:
    """Keep the API and worker up for the dashboard until Ctrl-C (or the API exits)."""
    print(f"Dashboard: {url}")
    print(f"  log in with the demo's API key {key}; serving until Ctrl-C", flush=True)
    try:
        while api.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping the demo")


def _demo_key(env: dict[str, str]) -> str:
    """Migrate the embedded database and create the demo tenant's API key."""
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(_cli("migrate"), env=env, check=True, stdout=subprocess.DEVNULL)
    created = subprocess.run(_cli("keys", "create", "--tenant", "demo", "--name", "demo"),
                             env=env, check=True, capture_output=True, text=True)
    return str(httpx.Response(200, content=created.stdout).json()["key"])


def _sweep_body(alphas: list[float], epochs: int) -> dict[str, Any]:
    return {
        "base": {
            "dataset": {"source": "builtin", "name": "digits"},
            "training": {"epochs": epochs},
            "tags": {"demo": "alpha-comparison"},
        },
        "alphas": alphas,
        "seeds": [0],
        "objective": "val_nll",
    }


def _print_report(client: httpx.Client, base: str, sweep_id: str) -> None:
    """Save the plots and print the comparison table, the recommendation and the front."""
    report = client.get(f"/v1/sweeps/{sweep_id}/report").json()
    out_dir = DEMO_DIR / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_plots(client, sweep_id, report, out_dir)
    print(format_table(report_rows(report)))
    rec = report.get("recommended") or {}
    if rec:
        print(f"recommended alpha for {rec['objective']}: {rec['alpha']:g} (validation "
              f"{rec['objective']} {rec['value']:.4f}; chosen on validation metrics only)")
    front = ", ".join(f"{p['alpha']:g}" for p in report.get("pareto_front", []))
    print(f"Pareto front of (accuracy, ECE): alpha in [{front}]")
    print(f"Report: {base}/v1/sweeps/{sweep_id}/report")
    print(f"Plots written to {out_dir.resolve()}")


def _run_sweep(client: httpx.Client, base: str, alphas: list[float], epochs: int) -> str | None:
    """Submit the demo sweep and wait for it; its id, or None when it did not succeed."""
    print(f"Softlabel demo: API on {base}, worker started; one sweep over alpha in {alphas} "
          f"on digits/MLP ({epochs} epochs), trained together as one stacked model")
    resp = client.post("/v1/sweeps", json=_sweep_body(alphas, epochs))
    if resp.status_code != 202:
        print(f"the sweep was refused: {resp.status_code} {resp.text}")
        return None
    sweep_id = str(resp.json()["id"])
    sweep = _wait_sweep(client, sweep_id)
    if sweep["status"] != "succeeded":
        print(f"sweep {sweep_id} ended {sweep['status']}: {sweep['progress']}")
        return None
    return sweep_id


def run_demo(alphas: list[float], *, epochs: int = 30, serve: bool = True) -> int:
    """Run the demo end to end (one α sweep over HTTP); returns a process exit code."""
    env = _demo_env()
    key = _demo_key(env)
    base = f"http://127.0.0.1:{_free_port()}"
    log = open(DEMO_DIR / "demo.log", "ab")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(_cli("worker"), env=env, stdout=log, stderr=log)
    api = subprocess.Popen(_cli("api", "--port", base.rsplit(":", 1)[1]), env=env,
                           stdout=log, stderr=log)
    try:
        _wait_ready(base, api)
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        sweep_id = _run_sweep(client, base, alphas, epochs)
        if sweep_id is None:
            return 1
        _print_report(client, base, sweep_id)
        if serve:
            serve_until_interrupted(api, f"{base}/ui/sweeps/{sweep_id}", key)
        else:
            print(f"Dashboard (while serving): {base}/ui/sweeps/{sweep_id}")
        return 0
    finally:
        _stop(api)
        _stop(worker)
        log.close()
