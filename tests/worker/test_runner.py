"""The runner in-process against real Postgres: claims, lost leases, unknown commits."""

from __future__ import annotations

import threading
import time

from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from core.config import get_settings
from core.db import session_scope
from core.models import Job
from core.services import jobs as job_service
from tests.worker.faults import SMALL, count_status, create_job, job_row, make_tenant, wait_epoch
from worker.attempt import _transition
from worker.runner import execute_job

# Long enough to be running when its first progress shows: the worker stores checkpoints and
# progress at most once per CHECKPOINT_INTERVAL_S, and 40 such epochs take well under that.
LONGER = {"model": {"hidden": [32]}, "training": {"epochs": 400, "early_stopping": None}}


def test_two_deliveries_at_once_train_once(db: str) -> None:
    tenant, _ = make_tenant()
    job_id = create_job(tenant, SMALL)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def deliver() -> None:
        barrier.wait()
        outcomes.append(execute_job(job_id, settings=get_settings()))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["not_claimed", "succeeded"]
    assert count_status(job_id, "running") == 1
    assert count_status(job_id, "succeeded") == 1
    assert job_row(job_id).result is not None


def test_a_lost_lease_stops_training_without_a_result(db: str) -> None:
    tenant, _ = make_tenant()
    job_id = create_job(tenant, LONGER)
    outcome: list[str] = []
    thread = threading.Thread(
        target=lambda: outcome.append(execute_job(job_id, settings=get_settings()))
    )
    thread.start()
    wait_epoch(job_id, 1, 120)
    with session_scope() as s:  # the reconciler gave the job to another attempt
        s.execute(update(Job).where(Job.id == job_id).values(lease_owner="someone-else"))
    thread.join(60)
    assert outcome == ["lease_lost"]
    job = job_row(job_id)
    assert job.status == "running" and job.lease_owner == "someone-else"
    assert job.result is None and count_status(job_id, "succeeded") == 0


def test_commit_of_unknown_outcome_is_checked_before_retrying(db: str) -> None:
    tenant, _ = make_tenant()
    job_id = create_job(tenant, SMALL)
    with session_scope() as s:
        job_service.claim_job(s, job_id=job_id, owner="w1", lease_seconds=30)
    calls = []

    def fail_after_commit(session: object) -> bool:
        calls.append(time.monotonic())
        done = job_service.fail_job(
            session, job_id=job_id, owner="w1", reason="internal", message="boom"  # type: ignore[arg-type]
        )
        session.commit()  # type: ignore[attr-defined]
        if len(calls) == 1:  # the connection dropped while the COMMIT's answer was on its way
            raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))
        return done

    assert _transition(job_id, "w1", "test", fail_after_commit) is False
    assert len(calls) == 1  # it looked, saw the job no longer running, and did not redo it
    assert count_status(job_id, "failed") == 1


def test_a_cancel_after_the_last_heartbeat_ends_the_job_canceled_at_store(db: str) -> None:
    """The store is the worker's one look at the job after training: a cancel wins there."""
    from sqlalchemy import func, select

    from core.models import Artifact
    from worker.attempt import store_results

    tenant, _ = make_tenant()
    kept, canceled = create_job(tenant, SMALL), create_job(tenant, SMALL)
    with session_scope() as s:
        jobs = job_service.claim_group(s, job_ids=[kept, canceled], owner="w1", lease_seconds=30)
    with session_scope() as s:  # the user cancels while the last epoch trains
        job_service.cancel_job(s, tenant_id=tenant, job_id=canceled)
    finished = [(job, {"test": {"ece": 0.1}}, {"model.bin": b"weights"}) for job in jobs]
    assert store_results(finished, "w1") == ["succeeded", "canceled"]
    assert job_row(kept).status == "succeeded" and job_row(kept).result is not None
    row = job_row(canceled)
    assert row.status == "canceled" and row.result is None and row.failure_reason == "canceled"
    assert row.lease_owner is None and count_status(canceled, "canceled") == 1
    with session_scope() as s:
        query = select(Artifact.job_id, func.count()).where(Artifact.job_id.in_([kept, canceled]))
        stored = {job_id: n for job_id, n in s.execute(query.group_by(Artifact.job_id))}
    assert stored == {kept: 1}  # nothing of the canceled job's result is kept
    # a second store (as after a commit of unknown outcome) changes nothing; it reads the end
    assert store_results(finished[1:], "w1") == ["canceled"]
