"""P5 helpers: database queries per run (pg_stat_database) and 50 long-polling clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

# Backends flush their transaction counts when idle, at most every 10 s (PGSTAT_IDLE_INTERVAL).
STATS_SETTLE_S = 11.0


def xacts(admin: Any, db_name: str) -> int:
    """Committed + rolled back transactions of the database so far (autocommit: one per query)."""
    from sqlalchemy import text

    with admin.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = conn.execute(
            text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :db"),
            {"db": db_name},
        ).scalar_one()
    return int(row)


def job_scans(dsn: str) -> int:
    """Scans of the job table so far (seq + index; pg_stat_user_tables): its reads and updates.

    Unlike the database's transaction count, no autovacuum or connection start-up adds to it.
    """
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
            "WHERE relname = 'job'"
        ).fetchone()
    return int(row[0]) if row else 0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class _RawClient:
    """One keep-alive HTTP/1.1 connection with a minimal client on asyncio streams.

    httpx costs about a millisecond of this process's CPU per response on a slow core: 50 of
    them answering at once would measure the load generator's queue, not the service. This
    reads the status line and headers, then the body by Content-Length, and nothing more.
    """

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        url = httpx.URL(base)
        self.host, self.port = url.host, url.port or 80
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, target: str, extra: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Send one GET; (status, headers lower-cased, body)."""
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        lines = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}"
                          f"{lines}\r\n".encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        fields = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        headers = {k.lower(): v for k, v in fields.items()}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def close(self) -> None:
        """Close the connection."""
        if self.writer is not None:
            self.writer.close()


async def _client(
    base: str, path: str, headers: dict[str, str], etag: str, seen: dict[int, float], last: int
) -> int:
    """Long-poll until the job's progress epoch reaches `last`; returns requests sent."""
    sent = 0
    client = _RawClient(base, headers)
    try:
        while True:
            status, got, body = await client.get(f"{path}?wait=30", {"If-None-Match": etag})
            now = time.monotonic()
            sent += 1
            if status == 200:
                etag = got["etag"]
                epoch = int((json.loads(body).get("progress") or {}).get("epoch") or 0)
                seen.setdefault(epoch, now)
                if epoch >= last:
                    return sent
    finally:
        await client.close()


async def long_poll_phase(
    *, base: str, key: str, job_id: str, dsn: str, clients: int, changes: int,
    count: Callable[[], int] | None = None, cpu: Any = None,
) -> dict[str, Any]:
    """`clients` long polls on one job; the job changes `changes` times (one UPDATE each).

    Latency: from the UPDATE's commit to each client's response showing it. The next change
    comes once every client has seen the last one and is waiting again. `count` (the
    database's statements so far) is read once every client waits and again after the last
    answer: `queries` is the difference (the UPDATEs included), and `job_scans` the job table's
scans meanwhile (the UPDATEs' included). `cpu` (bench.api.CpuWindow) is started before the
first change and stopped after the last client's answer; its figures are returned too.
    """
    import psycopg

    headers = {"Authorization": f"Bearer {key}"}
    path = f"/v1/jobs/{job_id}"
    etag = httpx.get(f"{base}{path}", headers=headers).headers["ETag"]
    seen: list[dict[int, float]] = [{} for _ in range(clients)]
    tasks = [
        asyncio.create_task(_client(base, path, headers, etag, seen[i], changes))
        for i in range(clients)
    ]
    await asyncio.sleep(2.0)  # every client is waiting
    if count is not None:
        await asyncio.sleep(STATS_SETTLE_S)  # the statistics of the start-up are flushed
        before = await asyncio.to_thread(count)
        scans_before = await asyncio.to_thread(job_scans, dsn)
    latencies: list[float] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        if cpu is not None:
            cpu.start()
        for epoch in range(1, changes + 1):
            await conn.execute(
                "UPDATE job SET progress = %s::jsonb WHERE id = %s",
                (f'{{"epoch": {epoch}, "epochs": {changes}}}', job_id),
            )
            committed = time.monotonic()
            deadline = committed + 30
            while not all(epoch in s for s in seen) and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            latencies += [(s[epoch] - committed) * 1000 for s in seen if epoch in s]
            await asyncio.sleep(0.3)  # the clients' next long polls are registered
    sent = sum(await asyncio.gather(*tasks))
    window = cpu.stop() if cpu is not None else {}
    queries = scans = None
    if count is not None:
        await asyncio.sleep(STATS_SETTLE_S)
        scans = await asyncio.to_thread(job_scans, dsn) - scans_before
        queries = await asyncio.to_thread(count) - before
    return {
        **window,
        "queries": queries,
        "job_scans": scans,
        "changes": changes,
        "clients": clients,
        "deliveries": len(latencies),
        "requests": sent + 1,
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": max(latencies),
    }


def run_long_poll(**kwargs: Any) -> dict[str, Any]:
    """long_poll_phase on a fresh event loop."""
    return asyncio.run(long_poll_phase(**kwargs))
