"""Soak (issue 8): 200 small jobs while a worker is SIGKILLed twice and Redis restarted once.

Usage: python bench/soak.py [--jobs 200] [--clients 16] [--concurrency 1]

Runs against the local Postgres (a database `softlabel_soak_<pid>` of its own, created and
dropped) and a private redis-server without persistence on a free port (so restarting it
disturbs no one). It starts the API, a worker and the reconciler as real processes, submits
the jobs concurrently over HTTP, and while they run: SIGKILLs the worker (main process and
pool child) after ~15 % of the jobs ended, restarts Redis with an empty queue after ~40 %,
SIGKILLs the worker again after ~65 %. Each killed worker is replaced. At the end it checks,
from Postgres, that every job succeeded with exactly one result and one `succeeded`
transition, and prints the counts and the wall time as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG_SERVER = os.environ.get("SOFTLABEL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
DB_NAME = f"softlabel_soak_{os.getpid()}"
VAR_DIR = Path(tempfile.mkdtemp(prefix="softlabel-soak-"))
os.environ.update(
    {
        "SOFTLABEL_DATABASE_URL": f"{PG_SERVER}/{DB_NAME}",
        "SOFTLABEL_VAR_DIR": str(VAR_DIR),
        "SOFTLABEL_HEARTBEAT_SECONDS": "0.5",
        "SOFTLABEL_LEASE_SECONDS": "6",
        "SOFTLABEL_QUEUED_GRACE_SECONDS": "20",
        "SOFTLABEL_MAX_ACTIVE_JOBS_PER_TENANT": "10000",
        "SOFTLABEL_LOG_JSON": "false",
        "OMP_NUM_THREADS": "1",
    }
)

SPEC = {
    "dataset": {"source": "builtin", "name": "iris"},
    "model": {"hidden": [16]},
    "training": {"epochs": 3},
}


def main() -> int:
    """Run the soak and print its report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1500)
    args = parser.parse_args()

    import httpx
    from sqlalchemy import create_engine, select, text

    from tests.processes import Proc, start_api, start_worker
    from tests.worker.faults import (
        RedisServer,
        kill_worker,
        start_reconciler,
        start_worker_with,
        stop_all,
    )

    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    redis_server = RedisServer(VAR_DIR / "redis.log").start()
    os.environ["SOFTLABEL_BROKER_URL"] = redis_server.url
    procs: list[Proc] = []
    events: list[str] = []
    t_start = time.monotonic()

    def note(what: str) -> None:
        events.append(f"{time.monotonic() - t_start:7.1f}s {what}")
        print(events[-1], file=sys.stderr, flush=True)

    def new_worker(n: int) -> Proc:
        log = VAR_DIR / f"worker-{n}.log"
        if args.concurrency == 1:
            return start_worker(log, timeout=180)
        return start_worker_with(log, dict(os.environ), "--concurrency", str(args.concurrency))

    try:
        from core.db import session_scope
        from core.models import Job, JobEvent
        from core.services.tenants import create_api_key
        from softlabel.server import migrate

        migrate("head")
        with session_scope() as s:
            _, key = create_api_key(s, tenant_name="soak")
        api = start_api(VAR_DIR / "api.log")
        procs.append(api)
        worker = new_worker(0)
        procs.append(worker)
        procs.append(start_reconciler(VAR_DIR / "reconciler.log", dict(os.environ), every=1.0))
        note("api, worker and reconciler up")

        t0 = time.monotonic()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=api.info["url"], headers=headers, timeout=60) as http:

            def submit(_: int) -> str:
                resp = http.post("/v1/jobs", json=SPEC)
                resp.raise_for_status()
                return str(resp.json()["id"])

            with ThreadPoolExecutor(args.clients) as pool:
                ids = list(pool.map(submit, range(args.jobs)))
        note(f"{len(ids)} jobs accepted in {time.monotonic() - t0:.1f}s")

        def ended() -> int:
            with session_scope() as s:
                rows = s.scalars(select(Job.status).where(Job.id.in_(ids)))
                return sum(1 for st in rows if st in ("succeeded", "failed", "canceled"))

        plan = [
            (0.15, "kill_worker"),
            (0.40, "restart_redis"),
            (0.65, "kill_worker"),
        ]
        kills = 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            done = ended()
            if plan and done >= plan[0][0] * len(ids):
                _, action = plan.pop(0)
                if action == "kill_worker":
                    kill_worker(worker)
                    kills += 1
                    note(f"SIGKILLed worker (main + pool child) at {done} ended")
                    worker = new_worker(kills)
                    procs.append(worker)
                    note("replacement worker ready")
                else:
                    redis_server.stop()
                    note(f"Redis killed (queue lost) at {done} ended")
                    time.sleep(1.0)
                    redis_server.start()
                    note("Redis back, empty")
            if done == len(ids):
                break
            time.sleep(0.5)
        wall = time.monotonic() - t0

        with session_scope() as s:
            jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
            status_events = list(
                s.scalars(
                    select(JobEvent).where(JobEvent.job_id.in_(ids), JobEvent.kind == "status")
                )
            )
        per_job: dict[str, Counter[str]] = {jid: Counter() for jid in ids}
        for ev in status_events:
            per_job[ev.job_id][str(ev.data.get("status"))] += 1
        statuses = Counter(j.status for j in jobs.values())
        report = {
            "jobs": len(ids),
            "statuses": dict(statuses),
            "with_result": sum(1 for j in jobs.values() if j.result is not None),
            "exactly_one_succeeded_event": sum(1 for c in per_job.values() if c["succeeded"] == 1),
            "more_than_one_succeeded_event": sum(1 for c in per_job.values() if c["succeeded"] > 1),
            "terminal_events_total": sum(
                c["succeeded"] + c["failed"] + c["canceled"] for c in per_job.values()
            ),
            "attempts": dict(Counter(j.attempt for j in jobs.values())),
            "jobs_started_more_than_once": sum(1 for c in per_job.values() if c["running"] > 1),
            "worker_sigkills": kills,
            "redis_restarts": 1 - sum(1 for _, a in plan if a == "restart_redis"),
            "wall_s": round(wall, 1),
            "timeline": events,
        }
        ok = (
            statuses.get("succeeded", 0) == len(ids)
            and report["exactly_one_succeeded_event"] == len(ids)
            and report["terminal_events_total"] == len(ids)
            and report["with_result"] == len(ids)
        )
        report["ok"] = ok
        print(json.dumps(report, indent=2))
        return 0 if ok else 1
    finally:
        stop_all(*reversed(procs))
        redis_server.stop()
        from core.db import get_engine

        get_engine().dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
