"""Event streams hold no pooled DB connection: a per-tenant cap (429), a heartbeat, and 200
open streams leave the database connections and other tenants' requests as they were.
A real API process on 127.0.0.1; bounded counts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from core.db import get_engine, session_scope
from core.services import tenants
from tests.processes import Proc, start_api, stop_process
from tests.worker.faults import create_job

STREAMS = 200


def _api(tmp_path: Path, **env: str) -> Proc:
    return start_api(tmp_path / "api.log", env=env)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        stop_process(proc)


def make_tenant(name: str) -> tuple[str, str]:
    """A tenant of this name and a raw API key."""
    with session_scope() as s:
        key, raw = tenants.create_api_key(s, tenant_name=name)
        return key.tenant_id, raw


def db_connections() -> int:
    """Connections of the test database that are busy or hold a transaction open."""
    with get_engine().connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state <> 'idle' AND pid <> pg_backend_pid()"
        )).scalar_one())


def test_per_tenant_cap_heartbeat_and_slot_release(
    db: str, redis_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    api = _api(tmp_path, SOFTLABEL_MAX_EVENT_STREAMS_PER_TENANT="3",
               SOFTLABEL_EVENT_STREAM_HEARTBEAT_SECONDS="0.5")
    procs.append(api)
    tenant_a, key_a = make_tenant("streams-a")
    tenant_b, key_b = make_tenant("streams-b")
    job_a = create_job(tenant_a, {})  # queued, no worker: its stream stays open
    job_b = create_job(tenant_b, {})
    url = api.info["url"]
    with contextlib.ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=url, timeout=30))
        auth_a = {"Authorization": f"Bearer {key_a}"}
        opened = [stack.enter_context(http.stream("GET", f"/v1/jobs/{job_a}/events",
                                                  headers=auth_a)) for _ in range(3)]
        assert all(r.status_code == 200 for r in opened)
        assert all(r.headers["x-content-type-options"] == "nosniff" for r in opened)
        refused = http.get(f"/v1/jobs/{job_a}/events", headers=auth_a)
        assert refused.status_code == 429 and refused.headers["retry-after"]
        assert refused.headers["content-type"].startswith("application/problem+json")
        other = http.stream("GET", f"/v1/jobs/{job_b}/events",
                            headers={"Authorization": f"Bearer {key_b}"})
        with other as resp:  # the cap is per tenant
            assert resp.status_code == 200
        lines = opened[0].iter_lines()
        seen = [next(lines) for _ in range(8)]  # ": connected", queued status..., keep-alive
        assert ": keep-alive" in seen, seen
        opened[1].close()
    # every slot comes back once the server sees the streams closed (at its next send)
    accepted = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(100):
            with http.stream("GET", f"/v1/jobs/{job_a}/events", headers=auth_a) as resp:
                if resp.status_code == 200:
                    accepted += 1
                    break
            time.sleep(0.1)
    assert accepted == 1


async def _open_streams(url: str, key: str, job_id: str, n: int,
                        ready: asyncio.Event, stop: asyncio.Event) -> list[int]:
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        async def one() -> None:
            async with http.stream("GET", f"/v1/jobs/{job_id}/events",
                                   headers={"Authorization": f"Bearer {key}"}) as resp:
                statuses.append(resp.status_code)
                async for _ in resp.aiter_lines():  # the first line: ": connected"
                    break
                if len(statuses) == n:
                    ready.set()
                await stop.wait()

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
    return statuses


async def _p99_list(url: str, key: str, n: int = 60) -> tuple[float, list[int]]:
    times, codes = [], []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            resp = await http.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
            times.append(time.perf_counter() - t0)
            codes.append(resp.status_code)
    times.sort()
    return times[int(0.99 * (len(times) - 1))], codes


def test_200_streams_hold_no_connections_and_leave_other_requests_alone(
    db: str, redis_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    api = _api(tmp_path, SOFTLABEL_MAX_EVENT_STREAMS_PER_TENANT=str(STREAMS))
    procs.append(api)
    tenant_a, key_a = make_tenant("streams-a")
    _, key_b = make_tenant("streams-b")
    job_a = create_job(tenant_a, {})
    url = api.info["url"]

    async def scenario() -> dict[str, Any]:
        base_p99, base_codes = await _p99_list(url, key_b)
        base_conns = db_connections()
        ready, stop = asyncio.Event(), asyncio.Event()
        streams = asyncio.create_task(_open_streams(url, key_a, job_a, STREAMS, ready, stop))
        await asyncio.wait_for(ready.wait(), 120)
        await asyncio.sleep(1.0)  # a few poll rounds with every stream open
        conns = db_connections()
        p99, codes = await _p99_list(url, key_b)
        stop.set()
        return {"base": base_p99, "p99": p99, "codes": base_codes + codes,
                "base_conns": base_conns, "conns": conns, "streams": await streams}

    out = asyncio.run(scenario())
    print(f"\nother tenant's GET /v1/jobs p99: {out['base'] * 1000:.1f} ms alone, "
          f"{out['p99'] * 1000:.1f} ms with {STREAMS} streams open; DB connections "
          f"{out['base_conns']} -> {out['conns']}")
    assert out["streams"] == [200] * STREAMS
    assert set(out["codes"]) == {200}
    assert out["conns"] <= out["base_conns"] + 2, out  # streams hold no connection
    assert out["p99"] <= 3 * out["base"] + 0.25, out  # generous: a 2-core shared machine
