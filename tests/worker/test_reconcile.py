"""The reconciler against real Postgres: expired leases, attempts, timeouts, lost messages."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select, update

from core.config import get_settings
from core.db import session_scope
from core.models import Job, JobEvent
from core.services import jobs as job_service
from core.services.reconcile import reclaim_expired_leases, reconcile_once, stale_queued_jobs
from core.timeutil import utcnow
from tests.worker.faults import SMALL, count_status, create_job, job_row, make_tenant


def claimed(job_id: str, owner: str = "w1", *, expired_s: float = 10) -> None:
    """Claim the job and move its lease into the past (its worker died)."""
    with session_scope() as s:
        assert job_service.claim_job(s, job_id=job_id, owner=owner, lease_seconds=5)
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=expired_s))
        )


def test_expired_lease_goes_back_to_queued_with_next_attempt(db: str, redis_url: str) -> None:
    tenant, _ = make_tenant()
    job_id = create_job(tenant, SMALL)
    claimed(job_id)
    report = reconcile_once(get_settings())
    assert report.requeued == [job_id]
    job = job_row(job_id)
    assert job.status == "queued" and job.attempt == 2 and job.lease_owner is None
    assert job.enqueued_at is not None  # handed to the broker again
    assert count_status(job_id, "queued") == 2
    # the dead worker's late write is refused: it no longer owns the job
    with session_scope() as s:
        assert not job_service.complete_job(s, job_id=job_id, owner="w1", result={"x": 1})
        assert job_service.renew_lease(s, job_id=job_id, owner="w1", lease_seconds=5) == "lost"


def test_live_lease_is_left_alone(db: str) -> None:
    tenant, _ = make_tenant()
    job_id = create_job(tenant, SMALL)
    with session_scope() as s:
        job_service.claim_job(s, job_id=job_id, owner="w1", lease_seconds=60)
    with session_scope() as s:
        report = reclaim_expired_leases(s)
    assert report.requeued == [] and job_row(job_id).status == "running"


def test_last_attempt_fails_worker_lost(db: str) -> None:
    tenant, _ = make_tenant()
    job_id = create_job(tenant, SMALL, max_attempts=2)
    for _ in range(2):
        claimed(job_id)
        with session_scope() as s:
            reclaim_expired_leases(s)
    job = job_row(job_id)
    assert job.status == "failed" and job.failure_reason == "worker_lost"
    assert job.attempt == 2 and job.finished_at is not None
    with session_scope() as s:  # terminal: nothing claims or reclaims it again
        assert not job_service.claim_job(s, job_id=job_id, owner="w2", lease_seconds=5)
        assert reclaim_expired_leases(s).failed == []
    assert count_status(job_id, "failed") == 1


def test_attempt_past_the_hard_time_limit_fails_timeout(db: str) -> None:
    tenant, _ = make_tenant()
    job_id = create_job(tenant, SMALL)
    claimed(job_id)
    with session_scope() as s:  # the attempt started 100 s ago
        s.execute(
            update(JobEvent)
            .where(JobEvent.job_id == job_id)
            .values(created_at=utcnow() - timedelta(seconds=100))
        )
    with session_scope() as s:
        report = reclaim_expired_leases(s, time_limit_s=60)
    assert report.timed_out == [job_id]
    job = job_row(job_id)
    assert job.status == "failed" and job.failure_reason == "timeout"


def test_concurrent_reconcilers_handle_each_job_once(db: str) -> None:
    tenant, _ = make_tenant()
    ids = [create_job(tenant, SMALL) for _ in range(20)]
    for job_id in ids:
        claimed(job_id)
    reports = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        with session_scope() as s:
            reports.append(reclaim_expired_leases(s))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handled = [j for r in reports for j in r.requeued]
    assert sorted(handled) == sorted(ids)
    for job_id in ids:
        assert job_row(job_id).attempt == 2
        assert count_status(job_id, "queued") == 2


def test_stale_queued_jobs_are_found(db: str) -> None:
    tenant, _ = make_tenant()
    never_sent = create_job(tenant, SMALL)
    fresh = create_job(tenant, SMALL)
    long_ago = utcnow() - timedelta(seconds=120)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == never_sent).values(queued_at=long_ago))
    with session_scope() as s:
        assert stale_queued_jobs(s, grace_seconds=60) == [never_sent]
    assert fresh


def test_reconciler_purges_expired_idempotency_keys_only(db: str, redis_url: str) -> None:
    from core.models import IdempotencyKey
    from core.services import idempotency

    tenant, _ = make_tenant()
    with session_scope() as s:
        for key in ("old-1", "old-2", "fresh"):
            claim = idempotency.claim_key(
                s,
                tenant_id=tenant,
                key=key,
                method="POST",
                path="/v1/jobs",
                request_hash=key,
                ttl_hours=1,
            )
            assert claim.state == "new"
        s.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key.in_(("old-1", "old-2")))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    report = reconcile_once(get_settings())
    assert report.purged_keys == 2
    with session_scope() as s:
        left = sorted(s.scalars(select(IdempotencyKey.key)))
    assert left == ["fresh"]
    assert reconcile_once(get_settings()).purged_keys == 0
