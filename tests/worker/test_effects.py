"""After-commit effects against real Postgres and Redis: run after commit, dropped on rollback."""

from __future__ import annotations

import pytest
import redis

from core.db import session_scope
from core.queue import QUEUE_TRAINING
from core.services.effects import effects
from tests.worker.faults import SMALL, create_job, job_row, make_tenant


def _queued_messages(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.llen(QUEUE_TRAINING))
    finally:
        client.close()


def test_enqueue_runs_after_commit_and_marks_the_job(db: str, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).delete(QUEUE_TRAINING)
    tenant, _ = make_tenant()
    job_id = create_job(tenant, SMALL)
    with session_scope() as s:
        effects(s).enqueue_job(job_id)
        assert _queued_messages(redis_url) == 0  # nothing before the commit
        assert job_row(job_id).enqueued_at is None
    assert _queued_messages(redis_url) == 1
    assert job_row(job_id).enqueued_at is not None


def test_a_rollback_drops_the_effects(db: str, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).delete(QUEUE_TRAINING)
    tenant, _ = make_tenant()
    job_id = create_job(tenant, SMALL)
    with pytest.raises(RuntimeError), session_scope() as s:
        effects(s).enqueue_job(job_id)
        raise RuntimeError("the transaction fails")
    with session_scope():
        pass  # a later commit on a new session runs nothing of the dropped one
    assert _queued_messages(redis_url) == 0
    assert job_row(job_id).enqueued_at is None

