"""Benchmark (SPEC §10 P4): the service's overhead on one job, and submit→running latency.

Usage: python bench/overhead.py [--embedded] [--reps N] [--latency-jobs N] [--epochs E]

* **End to end vs direct.** One digits/MLP job (the default spec, 30 epochs) submitted through
  the HTTP API (a real uvicorn process) and trained by a real Celery worker process, timed from
  the moment the POST is sent to the job's `finished_at` (the result is committed and readable
  then; the client then polls to see it), against the same spec trained directly in this process
  by `core.ml.experiment.run_experiment(spec)`. Interleaved, in alternating order, `--reps`
  times each after one warm-up of each; the ratio of the medians is reported (target ≤ 1.10×).
* **Submit→running.** With the worker idle, `--latency-jobs` tiny jobs (1 epoch) are submitted
  one at a time; the latency is the job's `started_at` (set by the worker's claim) minus the
  moment the POST was sent (target median ≤ 100 ms). The next job is sent once the last one
  has finished, so the worker is idle each time.

By default it runs against Postgres on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 like the test
suite (a database `softlabel_bench_<pid>` of its own, created and dropped; Redis db 0, which the
tests never use); `--embedded` runs on SQLite and kombu's filesystem broker instead.
Timings are wall-clock on this machine; only the ratios are meant to be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_SERVER = os.environ.get("SOFTLABEL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("SOFTLABEL_TEST_REDIS", "redis://127.0.0.1:6379")
BENCH_DB = f"softlabel_bench_{os.getpid()}"
# The test suite uses Redis dbs 1..15 (and flushes its own); db 0 is out of its way. It is not
# flushed here: stale messages for other databases' jobs cannot be claimed, so they are no-ops.
REDIS_DB = 0
LOST_AFTER_S = 20.0  # a job still queued this long lost its delivery: re-enqueue, redo the sample

TARGET_RATIO = 1.10
TARGET_LATENCY_MS = 100.0


def configure(embedded: bool, var_dir: Path) -> None:
    """Set SOFTLABEL_* before anything reads Settings; the subprocesses inherit them."""
    for name in [k for k in os.environ if k.startswith("SOFTLABEL_")]:
        if name not in ("SOFTLABEL_TEST_PG", "SOFTLABEL_TEST_REDIS"):
            del os.environ[name]
    os.environ.update(
        {
            "SOFTLABEL_VAR_DIR": str(var_dir),
            "SOFTLABEL_ARTIFACT_DIR": str(var_dir / "artifacts"),
            "SOFTLABEL_LOG_JSON": "false",
            "MPLBACKEND": "Agg",
        }
    )
    # The reconciler pass below re-enqueues a job queued longer than this without a claim.
    os.environ["SOFTLABEL_QUEUED_GRACE_SECONDS"] = str(LOST_AFTER_S / 2)
    if not embedded:
        os.environ["SOFTLABEL_DATABASE_URL"] = f"{PG_SERVER}/{BENCH_DB}"
        os.environ["SOFTLABEL_BROKER_URL"] = f"{REDIS_SERVER}/{REDIS_DB}"


def create_database() -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{BENCH_DB}"'))
    admin.dispose()


def drop_database() -> None:
    from sqlalchemy import create_engine, text

    from core.db import get_engine

    get_engine().dispose()
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
    admin.dispose()


class LostDelivery(Exception):
    """The broker lost the job's message; the reconciler re-enqueued it; the sample is void."""


def make_key() -> str:
    from core.db import session_scope
    from core.services.tenants import create_api_key

    with session_scope() as session:
        _, raw = create_api_key(session, tenant_name="bench")
    return raw


def ts(value: str) -> float:
    """Epoch seconds of an ISO-8601 timestamp from the API."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def job_spec(epochs: int) -> dict[str, Any]:
    return {
        "dataset": {"source": "builtin", "name": "digits"},
        "model": {"arch": "mlp"},
        "loss": {"alpha": 0.1},
        "training": {"epochs": epochs, "device": "cpu"},
    }


def submit_and_wait(client: Any, spec: dict[str, Any], poll: float, *,
                    long_poll: bool = True) -> dict[str, Any]:
    """POST the spec, wait for a terminal status; returns the job plus the send time.

    `long_poll`: GETs with `?wait=poll` (as the client's wait() does: the client costs the
    machine nothing while the worker trains); else a plain GET every `poll` seconds.
    """
    sent = time.time()
    resp = client.post("/v1/jobs", json=spec)
    if resp.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs: {resp.status_code} {resp.text}")
    job_id = resp.json()["id"]
    deadline = time.monotonic() + 600
    etag: str | None = None
    while time.monotonic() < deadline:
        if long_poll:
            reply = client.get(f"/v1/jobs/{job_id}", params={"wait": f"{poll:g}"},
                               headers={"If-None-Match": etag} if etag else {})
            if reply.status_code == 304:
                continue
        else:
            reply = client.get(f"/v1/jobs/{job_id}")
        etag = reply.headers.get("ETag")
        job = reply.json()
        if job["status"] == "queued" and time.time() - sent > LOST_AFTER_S:
            from softlabel.server import reconcile

            print(f"  (job {job_id} lost its delivery; reconciler: {reconcile()})")
            while client.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
                time.sleep(0.1)
            raise LostDelivery(job_id)
        if job["status"] in ("succeeded", "failed", "canceled"):
            seen = time.time()
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('failure')}")
            return {"job": job, "sent": sent, "seen": seen}
        if not long_poll:
            time.sleep(poll)
    raise RuntimeError(f"job {job_id} did not finish in time")


def run_direct(spec: dict[str, Any]) -> tuple[float, int, float]:
    """Resolve the spec as the API does and train it here; (seconds, epochs, its train_s)."""
    from core.ml.experiment import run_experiment
    from core.spec import JobSpec

    resolved = JobSpec.model_validate(spec).resolved()
    start = time.perf_counter()
    output = run_experiment(resolved)
    seconds = time.perf_counter() - start
    return seconds, len(output.result["history"]), float(output.result["timing"]["train_s"])


def api_sample(client: Any, spec: dict[str, Any], poll: float, *,
               long_poll: bool = True) -> dict[str, Any]:
    """submit_and_wait, redone when the delivery was lost (that run's timing is void)."""
    for _ in range(3):
        try:
            return submit_and_wait(client, spec, poll, long_poll=long_poll)
        except LostDelivery:
            continue
    raise RuntimeError("three deliveries in a row were lost; is something flushing Redis?")


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedded", action="store_true", help="SQLite + filesystem broker")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each side")
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    var_dir = Path(tempfile.mkdtemp(prefix="softlabel-bench-"))
    configure(args.embedded, var_dir)

    import httpx

    from softlabel.server import migrate
    from tests.processes import Proc, start_api, start_worker, stop_process

    procs: list[Proc] = []
    if not args.embedded:
        create_database()
    try:
        migrate("head")
        key = make_key()
        procs.append(start_worker(var_dir / "worker.log"))
        api = start_api(var_dir / "api.log")
        procs.append(api)
        client = httpx.Client(
            base_url=api.info["url"], headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        spec = job_spec(args.epochs)
        mode = "embedded (SQLite + filesystem broker)" if args.embedded else "Postgres + Redis"
        print(f"P4 overhead: digits/MLP, {args.epochs} epochs, {mode}, reps={args.reps}")

        # Warm-up: the worker's first job imports torch and friends; so does this process.
        api_sample(client, spec, poll=5.0)
        run_direct(spec)

        e2e: list[float] = []
        seen: list[float] = []
        train_in_worker: list[float] = []
        direct: list[float] = []
        train_direct: list[float] = []
        epochs_api: set[int] = set()
        epochs_direct: set[int] = set()
        for rep in range(args.reps):
            order = ("api", "direct") if rep % 2 == 0 else ("direct", "api")
            for side in order:
                if side == "api":
                    done = api_sample(client, spec, poll=5.0)
                    job = done["job"]
                    e2e.append(ts(job["finished_at"]) - done["sent"])
                    seen.append(done["seen"] - done["sent"])
                    result = client.get(f"/v1/jobs/{job['id']}/result").json()
                    train_in_worker.append(float(result["timing"]["train_s"]))
                    epochs_api.add(len(result["history"]))
                else:
                    seconds, n_epochs, train_s = run_direct(spec)
                    direct.append(seconds)
                    train_direct.append(train_s)
                    epochs_direct.add(n_epochs)

        # Submit→running with an idle worker.
        small = job_spec(1)
        latencies: list[float] = []
        for _ in range(args.latency_jobs):
            time.sleep(0.05)  # the worker is idle and waiting on the broker
            done = api_sample(client, small, poll=5.0)
            latencies.append((ts(done["job"]["started_at"]) - done["sent"]) * 1000)
        client.close()
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        if not args.embedded:
            drop_database()
        shutil.rmtree(var_dir, ignore_errors=True)

    ratio = median(e2e) / median(direct)
    ratio_seen = median(seen) / median(direct)
    lat_median = median(latencies)
    lat_p90 = sorted(latencies)[max(0, int(round(0.9 * len(latencies))) - 1)]
    print(f"epochs trained: api {sorted(epochs_api)}, direct {sorted(epochs_direct)}")
    print()
    head = f"{'measure':<44} {'median':>10} {'min–max':>15} {'n':>3}"
    print(head)
    print("-" * len(head))
    outside_api = [e - t for e, t in zip(e2e, train_in_worker, strict=True)]
    outside_direct = [d - t for d, t in zip(direct, train_direct, strict=True)]
    rows = [
        ("direct run_experiment(spec) [s]", direct),
        ("API+worker: POST sent → finished_at [s]", e2e),
        ("API+worker: POST sent → client saw it [s]", seen),
        ("  of which train_s inside the worker [s]", train_in_worker),
        ("  of which train_s in the direct run [s]", train_direct),
        ("outside training, API+worker [s]", outside_api),
        ("outside training, direct [s]", outside_direct),
    ]
    for name, values in rows:
        print(f"{name:<44} {median(values):>10.3f} {spread(values):>15} {len(values):>3}")
    print(
        f"{'submit → running (started_at) [ms]':<44} {lat_median:>10.1f} "
        f"{f'{min(latencies):.1f}–{max(latencies):.1f}':>15} {len(latencies):>3}"
    )
    print()
    ok_ratio = ratio <= TARGET_RATIO
    ok_latency = lat_median <= TARGET_LATENCY_MS
    print(f"{'target':<44} {'value':>10} {'goal':>15}")
    print(
        f"{'end to end / direct (finished_at)':<44} {ratio:>9.3f}x {f'<= {TARGET_RATIO:.2f}x':>15}"
        f"  {'OK' if ok_ratio else 'MISSED'}"
    )
    print(f"{'end to end / direct (as the client saw it)':<44} {ratio_seen:>9.3f}x {'(info)':>15}")
    print(
        f"{'submit → running median':<44} {lat_median:>8.1f}ms "
        f"{f'<= {TARGET_LATENCY_MS:.0f}ms':>15}"
        f"  {'OK' if ok_latency else 'MISSED'}   (p90 {lat_p90:.1f} ms)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "mode": "embedded" if args.embedded else "services",
                    "epochs": args.epochs,
                    "direct_s": direct,
                    "e2e_s": e2e,
                    "seen_s": seen,
                    "train_s_in_worker": train_in_worker,
                    "train_s_direct": train_direct,
                    "ratio": ratio,
                    "ratio_seen": ratio_seen,
                    "submit_to_running_ms": latencies,
                    "submit_to_running_median_ms": lat_median,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
