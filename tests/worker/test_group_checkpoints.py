"""Group checkpoint storage against real Postgres: owner-checked stores, lookup, deletion."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from core.config import get_settings
from core.db import session_scope
from core.models import Job
from core.services import jobs as job_service
from core.services.jobs import ClaimedJob
from core.services.reconcile import reclaim_expired_leases
from core.states import StopReason
from core.timeutil import utcnow
from tests.worker.faults import SMALL, create_job, make_tenant
from worker.group_checkpoints import (
    GroupCheckpointWriter,
    discard_group_checkpoint,
    read_group_checkpoint,
)
from worker.lease import GroupLeaseKeeper


def claim(ids: list[str], owner: str) -> list[ClaimedJob]:
    """Claim the group as `owner`."""
    with session_scope() as s:
        return job_service.claim_group(s, job_ids=ids, owner=owner, lease_seconds=30)


def store(group: list[ClaimedJob], owner: str, blob: bytes, *, retired: bool = False) -> str | None:
    """Hand one checkpoint to a writer of `owner` and close it (stores what waits)."""
    lease = GroupLeaseKeeper(job_ids=[j.id for j in group], owner=owner, settings=get_settings())
    if retired:
        for job in group:
            lease.retire(job.id)
    with GroupCheckpointWriter(group, owner, lease) as writer:
        writer.checkpoint_ready(lambda: blob)
    return writer.stop_reason


def test_a_worker_that_lost_the_group_does_not_overwrite_its_checkpoint(db: str) -> None:
    tenant, _ = make_tenant()
    ids = [create_job(tenant, SMALL) for _ in range(2)]
    first = claim(ids, "w1")
    assert store(first, "w1", b"epoch 1 of w1") is None
    assert read_group_checkpoint(first) == b"epoch 1 of w1"
    with session_scope() as s:  # w1 died: its leases expired and went back to the queue
        s.execute(update(Job).where(Job.id.in_(ids))
                  .values(lease_expires_at=utcnow() - timedelta(seconds=10)))
    with session_scope() as s:
        assert sorted(reclaim_expired_leases(s).requeued) == sorted(ids)
    second = claim(ids, "w2")
    assert [j.attempt for j in second] == [2, 2]
    assert read_group_checkpoint(second) == b"epoch 1 of w1"  # attempt 2 finds it
    assert store(second, "w2", b"epoch 3 of w2") is None
    assert store(first, "w1", b"late epoch 2 of w1") is None  # refused: w2 owns the trials
    assert read_group_checkpoint(second) == b"epoch 3 of w2"
    # every trial of the group masked (lost or ended): the writer stops the training
    assert store(second, "w2", b"nothing", retired=True) == StopReason.LEASE_LOST
    assert read_group_checkpoint(second) == b"epoch 3 of w2"
    discard_group_checkpoint(second)
    assert read_group_checkpoint(second) is None
