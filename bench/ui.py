"""Benchmark: the dashboard's sweep page with 64 trials (server time, browser time, bytes).

Usage: python bench/ui.py [--reps N]

Embedded mode in a temporary directory (SQLite, no broker traffic): one sweep of 32 α × 2 seeds
whose 64 jobs get a well-formed synthetic result (15 reliability bins, 30 epochs of history),
then the report the worker would store. A real uvicorn process serves it.
* server: GET /ui/sweeps/{id} against its anchor GET /v1/sweeps/{id}/report (the same JSON),
  medians of --reps, as the ratio page / report;
* browser (headless Debian chromium, Playwright): navigation start to the moment ui.js marks
  the page ready (charts drawn), and the bytes it downloaded (every response body).
Timings are wall-clock on this machine; the ratio is what compares across machines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def synthetic_result(alpha: float, seed: int) -> dict[str, Any]:
    """A result document with the fields the sweep report and the pages read."""
    acc = 0.95 - alpha * 0.1 + seed * 0.002
    bins = [
        {"lo": i / 15, "hi": (i + 1) / 15, "count": 18, "confidence": (i + 0.5) / 15,
         "accuracy": min(1.0, (i + 0.5) / 15 + alpha)}
        for i in range(15)
    ]
    test = {"accuracy": acc, "nll": 0.2 + alpha, "brier": 0.1, "ece": 0.02 + alpha / 2,
            "ece_adaptive": 0.03, "mce": 0.1, "classwise_ece": 0.01, "mean_confidence": acc - 0.1,
            "overconfidence": -0.1, "mean_entropy": 0.5, "reliability": bins,
            "logit_gap": {"mean": 4.0, "median": 4.1, "optimum": 4.5}}
    history = [{"epoch": e, "train_loss": 1 / e, "val_nll": 0.3 + 1 / e, "val_accuracy": acc,
                "val_ece": 0.05} for e in range(1, 31)]
    return {"test": test, "temperature_scaled": {"temperature": 0.8, "test": dict(test)},
            "history": history, "best_epoch": 30, "dataset": {"n_test": 270}}


def build_sweep(n_alphas: int = 32) -> tuple[str, str]:
    """Store a finished 64-trial sweep with its report; returns (api key, sweep id)."""
    from core.db import session_scope
    from core.ids import utcnow
    from core.models import Job, Tenant
    from core.services import sweeps
    from core.services.tenants import create_api_key
    from core.sweep_spec import SweepSpec

    alphas = [round(i * 0.9 / n_alphas, 4) for i in range(n_alphas)]
    with session_scope() as s:
        _, key = create_api_key(s, tenant_name="bench")
        tenant_id = s.query(Tenant).filter_by(name="bench").one().id
        spec = SweepSpec.model_validate({"alphas": alphas, "seeds": [0, 1]})
        created = sweeps.create_sweep(
            s, tenant_id=tenant_id, request=spec, max_trials=64, max_attempts=3
        )
        for job in [j for group in created.groups for j in group]:
            row = s.get(Job, job)
            row.status, row.finished_at = "succeeded", utcnow()
            row.result = synthetic_result(row.spec["loss"]["alpha"], row.spec["training"]["seed"])
        s.flush()
        created.sweep.report = sweeps.compute_report(s, created.sweep)
        created.sweep.status = "succeeded"
        return key, created.sweep.id


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def median_ms(client: httpx.Client, path: str, reps: int) -> float:
    """Median wall time of GET path in milliseconds (after one warm-up)."""
    client.get(path).raise_for_status()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def browser_figures(base: str, key: str, sweep_id: str, reps: int) -> tuple[float, int]:
    """Median ms from navigation start to ui.js ready, and the bytes of one cold load."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(f"{base}/ui/login")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{base}/ui/jobs")
        sizes: list[int] = []
        page.on("response", lambda r: sizes.append(len(r.body()) if r.status == 200 else 0))
        times = []
        for i in range(reps):
            page.goto(f"{base}/ui/sweeps/{sweep_id}")
            page.wait_for_function("document.body.dataset.ready === 'true'")
            times.append(page.evaluate("performance.now()"))
            if i == 0:
                cold = sum(sizes)
        browser.close()
    return statistics.median(times), cold


def main() -> int:
    """Run the benchmark and print its lines."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="softlabel-bench-ui-"))
    os.environ.update({"SOFTLABEL_VAR_DIR": str(var), "SOFTLABEL_ARTIFACT_DIR": str(var / "a")})
    for name in ("SOFTLABEL_DATABASE_URL", "SOFTLABEL_BROKER_URL", "SOFTLABEL_AUTH_DISABLED"):
        os.environ.pop(name, None)
    sys.path.insert(0, str(ROOT))
    from softlabel.server import migrate

    migrate("head")
    key, sweep_id = build_sweep()
    port = _port()
    base = f"http://127.0.0.1:{port}"
    log = open(var / "api.log", "ab")  # noqa: SIM115 - closed below
    api = subprocess.Popen([sys.executable, "-m", "softlabel.cli", "api", "--port", str(port)],
                           cwd=ROOT, stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            anchor = median_ms(client, f"/v1/sweeps/{sweep_id}/report", args.reps)
        ui_ms, html_bytes = _page_ms(base, key, sweep_id, args.reps)
        ready_ms, cold_bytes = browser_figures(base, key, sweep_id, max(3, args.reps // 4))
        print(f"sweep page, 64 trials: server {ui_ms:.1f} ms (median of {args.reps}), "
              f"GET report JSON {anchor:.1f} ms: page / report {ui_ms / anchor:.2f}x")
        print(f"HTML {html_bytes / 1024:.1f} KiB; browser to interactive (charts drawn) "
              f"{ready_ms:.0f} ms; one cold load downloads {cold_bytes / 1024:.1f} KiB in all")
    finally:
        api.terminate()
        api.wait(timeout=20)
        log.close()
        shutil.rmtree(var, ignore_errors=True)
    return 0


def _page_ms(base: str, key: str, sweep_id: str, reps: int) -> tuple[float, int]:
    """Median time of the sweep page for a logged-in browser session (cookie), its size."""
    with httpx.Client(base_url=base, follow_redirects=False) as c:
        form = c.get("/ui/login")
        token = form.text.split('name="csrf" value="')[1].split('"')[0]
        c.post("/ui/login", data={"api_key": key, "csrf": token, "next": "/ui/jobs"})
        page = f"/ui/sweeps/{sweep_id}"
        return median_ms(c, page, reps), len(c.get(page).content)


if __name__ == "__main__":
    raise SystemExit(main())
