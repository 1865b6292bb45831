"""P5: GET /v1/jobs/{id} under 50 concurrent clients (wrk) against uvicorn and real Postgres.

Usage: .venv/bin/python bench/api.py [--duration 15] [--connections 50] [--workers 2]
Needs Postgres (SOFTLABEL_TEST_PG, default postgresql+psycopg://postgres@127.0.0.1:5432),
Redis (SOFTLABEL_TEST_REDIS) and `wrk` (apt-get install -y wrk). Creates and drops its own
database. Prints req/s, p50, p99 and the ratios against the targets (>= 1000 req/s,
p99 <= 50 ms).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("SOFTLABEL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS = os.environ.get("SOFTLABEL_TEST_REDIS", "redis://127.0.0.1:6379")
TARGET_RPS, TARGET_P99_MS = 1000.0, 50.0


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/sec and latency percentiles from `wrk --latency` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    out = {"rps": rps}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        assert m, text
        out[f"p{pct}_ms"] = _ms(m.group(1), m.group(2))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    return out


def main() -> int:
    """Run the benchmark; exit 0 when both targets are met."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2

    from sqlalchemy import create_engine, text

    db_name = f"softlabel_bench_{os.getpid()}"
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    var_dir = tempfile.mkdtemp(prefix="softlabel-bench-")
    env = {
        **os.environ,
        "SOFTLABEL_DATABASE_URL": f"{PG}/{db_name}",
        "SOFTLABEL_BROKER_URL": f"{REDIS}/14",
        "SOFTLABEL_VAR_DIR": var_dir,
        "SOFTLABEL_LOG_JSON": "true",
    }
    api = None
    try:
        py = sys.executable
        subprocess.run([py, "-m", "softlabel.cli", "migrate"], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        created = subprocess.run(
            [py, "-m", "softlabel.cli", "keys", "create", "--tenant", "bench"],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        )
        key = httpx.Response(200, content=created.stdout).json()["key"]
        port = 18765
        log = open(Path(var_dir) / "api.log", "wb")  # noqa: SIM115 - closed with the process
        api = subprocess.Popen(
            [py, "-m", "uvicorn", "api.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(args.workers), "--log-level", "warning",
             "--no-access-log"],
            env=env, cwd=ROOT, stdout=log, stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}"}
        job = httpx.post(f"{base}/v1/jobs", json={"training": {"epochs": 1}}, headers=headers)
        job.raise_for_status()
        url = f"{base}/v1/jobs/{job.json()['id']}"
        wrk = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
               "--latency", "-H", f"Authorization: Bearer {key}", url]
        subprocess.run(wrk[:3] + ["-d3s"] + wrk[4:], capture_output=True, check=True)  # warm-up
        run = subprocess.run(wrk, capture_output=True, text=True, check=True)
        stats = parse_wrk(run.stdout)
    finally:
        if api is not None:
            api.send_signal(signal.SIGTERM)
            api.wait(timeout=30)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(var_dir, ignore_errors=True)
    rps_ratio = stats["rps"] / TARGET_RPS
    p99_ratio = stats["p99_ms"] / TARGET_P99_MS
    print(f"P5 GET /v1/jobs/{{id}}: {args.connections} connections, {args.duration}s, "
          f"uvicorn x{args.workers}, cpus={os.cpu_count()}")
    print(f"  req/s {stats['rps']:.0f}   p50 {stats['p50_ms']:.2f} ms   "
          f"p99 {stats['p99_ms']:.2f} ms   non-2xx {stats['non_2xx']:.0f}")
    print(f"  ratio req/s vs target 1000: {rps_ratio:.2f}x (>= 1.0 passes)")
    print(f"  ratio p99 vs target 50 ms: {p99_ratio:.2f}x (<= 1.0 passes)")
    ok = rps_ratio >= 1.0 and p99_ratio <= 1.0 and stats["non_2xx"] == 0
    print("  PASS" if ok else "  FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
