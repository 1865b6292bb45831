"""GET /v1/jobs/{id}'s reads: the one-query path, the ETag cache and the long poll's fan-out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import Request, Response

from api.deps import bearer_token, in_db_thread, request_settings, resolve_tenant
from api.longpoll import (
    ChangeListener,
    Fetched,
    cached_answer,
    cached_response,
    change_listener,
    conditional_response,
    etag_of,
    wait_for_change,
)
from api.schemas import job_out_json
from core.config import Settings
from core.db import async_read_pool, session_scope
from core.errors import NotFoundError, UnauthorizedError
from core.services import job_reads
from core.services.tenants import hash_key
from core.services.watch import CHANNEL_JOB
from core.states import TERMINAL_STATUSES


def _load_job(request: Request, settings: Settings, job_id: str) -> Mapping[Any, Any] | None:
    """The caller's job as a row of its JobOut columns (None: no such job for the tenant)."""
    token = bearer_token(request)
    if token is not None:
        row = job_reads.job_row_by_key(job_id=job_id, key_hash=hash_key(token))
        return _authenticated(request, row)
    with session_scope() as session:  # no key: 401, or the local tenant when auth is disabled
        tenant = resolve_tenant(request, session, settings)
        request.state.tenant_id = tenant.id  # whose fan-out bodies a long poll may take
        return job_reads.job_row(session, tenant_id=tenant.id, job_id=job_id)


def _authenticated(request: Request, row: Mapping[Any, Any] | None) -> Mapping[Any, Any] | None:
    """The job of a key-and-job row; 401 when the key matched nothing."""
    if row is None:
        raise UnauthorizedError("The API key is invalid or revoked")
    request.state.tenant_id = row["auth_tenant_id"]
    return row if row["id"] is not None else None


async def job_body(job_id: str, request: Request, listener: ChangeListener | None) -> bytes:
    """The caller's job as the JobOut JSON body (401 for a bad key, 404 for no such job).

    The hot path (P5): one query for the key and the job, awaited on the event loop on
    Postgres (a worker thread otherwise), the body written straight from the row (the same
    bytes as the JobOut response model). The key's tenant and the job's ETag go into the
    process's cache when no notification for them came during the read.
    """
    token = bearer_token(request)
    pool = async_read_pool() if token is not None else None
    if token is None or pool is None:
        settings = request_settings(request)
        row = await in_db_thread(_load_job, request, settings, job_id)
        if row is None:
            raise NotFoundError(f"Job {job_id} does not exist")
        return job_out_json(row)
    ticket = listener.cache.ticket() if listener is not None else None
    key_hash = hash_key(token)
    found = await job_reads.job_row_by_key_async(pool, job_id=job_id, key_hash=key_hash)
    row = _authenticated(request, found)
    tenant_id = str(request.state.tenant_id)
    if listener is not None:
        listener.cache.store_key(ticket, key_hash=key_hash, tenant_id=tenant_id)
    if row is None:
        raise NotFoundError(f"Job {job_id} does not exist")
    body = job_out_json(row)
    if listener is not None:
        listener.cache.store(ticket, CHANNEL_JOB, job_id, tenant_id=tenant_id, etag=etag_of(body),
                             body=body)
    return body


async def _fetch_job(job_id: str) -> Fetched | None:
    """The job's body by id, once per change for all of this process's waiters."""
    pool = async_read_pool()
    row = await job_reads.job_row_by_id_async(pool, job_id=job_id) if pool else None
    return None if row is None else Fetched(str(row["owner_tenant_id"]), job_out_json(row))


def _job_settled(body: bytes) -> bool:
    return bool(json.loads(body)["status"] in TERMINAL_STATUSES)


async def get_job_response(
    job_id: str, request: Request, *, wait: float | None, if_none_match: str | None
) -> Response:
    """GET /v1/jobs/{id}: the cached answer (200 or 304), else one read; or the long poll."""
    listener = change_listener(CHANNEL_JOB, _fetch_job)
    if listener is not None:
        listener.start()  # reads from now on can be cached
    if wait is None:
        cached = cached_answer(listener, CHANNEL_JOB, job_id, request)
        if cached is not None:
            return cached_response(cached, if_none_match)  # nothing changed since: no query
        return conditional_response(await job_body(job_id, request, listener), if_none_match)
    return await wait_for_change(
        listener=listener,
        channel=CHANNEL_JOB,
        key=job_id,
        request=request,
        load=lambda: job_body(job_id, request, listener),
        if_none_match=if_none_match,
        wait=wait,
        settled=_job_settled,
    )
