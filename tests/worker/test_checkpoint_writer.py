"""The worker's background checkpoint writer against real Postgres: pacing, order, ownership."""

from __future__ import annotations

import functools
import time

import pytest
from sqlalchemy import select, update

from core.db import session_scope
from core.models import Artifact, Job
from core.services import jobs as job_service
from core.services.jobs import ClaimedJob
from core.storage import get_artifact, job_artifact_key
from tests.worker.faults import SMALL, create_job, make_tenant, status_events
from worker import checkpoints
from worker.checkpoints import CHECKPOINT_NAME, CheckpointWriter


def _claimed(owner: str = "w1") -> ClaimedJob:
    tenant, _ = make_tenant()
    job_id = create_job(tenant, SMALL)
    with session_scope() as s:
        job = job_service.claim_job(s, job_id=job_id, owner=owner, lease_seconds=30)
        assert job is not None and job.tenant_id == tenant
        return job


def _stored(job: ClaimedJob) -> bytes | None:
    with session_scope() as s:
        found = get_artifact(s, key=job_artifact_key(job.id, CHECKPOINT_NAME))
    return found[1] if found else None


def _progress_epochs(job_id: str) -> list[int]:
    return [e["epoch"] for e in _events(job_id, "progress")]


def _events(job_id: str, kind: str) -> list[dict]:
    from core.models import JobEvent

    with session_scope() as s:
        rows = s.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.kind == kind)
            .order_by(JobEvent.id)
        ).all()
        return [dict(r.data) for r in rows]


def _encode(encoded: list[int], epoch: int) -> bytes:
    encoded.append(epoch)
    return f"epoch {epoch}".encode()


def _hand_over(writer: CheckpointWriter, epoch: int) -> None:
    writer.checkpoint_ready(lambda: f"checkpoint of epoch {epoch}".encode())
    writer.record_progress({"epoch": epoch, "train_loss": 1.0 / epoch})


def test_paced_latest_wins_and_progress_never_ahead_of_the_checkpoint(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "CHECKPOINT_INTERVAL_S", 0.3)
    job = _claimed()
    encoded: list[int] = []
    with CheckpointWriter(job, "w1", epochs=50) as writer:
        for epoch in range(1, 6):  # fast epochs: nothing is stored before the interval
            writer.checkpoint_ready(functools.partial(_encode, encoded, epoch))
            writer.record_progress({"epoch": epoch})
        assert _stored(job) is None and _progress_epochs(job.id) == []
        deadline = time.monotonic() + 10
        while _stored(job) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        # one store: the newest checkpoint (only it was encoded), then the rows up to it
        assert _stored(job) == b"epoch 5" and encoded == [5]
        while len(_progress_epochs(job.id)) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _progress_epochs(job.id) == [1, 2, 3, 4, 5]
        with session_scope() as s:
            assert s.get(Job, job.id).progress["epoch"] == 5  # type: ignore[union-attr]
        _hand_over(writer, 6)
        writer.close()  # a stop (cancel, shutdown, timeout) stores what waits at once
    assert _stored(job) == b"checkpoint of epoch 6"
    assert _progress_epochs(job.id) == [1, 2, 3, 4, 5, 6]


def _wait_stored(job: ClaimedJob, expected: bytes) -> bytes | None:
    # generous: after a store the writer waits max(interval, 20 x the store's time)
    deadline = time.monotonic() + 60
    while _stored(job) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return _stored(job)


def test_a_slow_epoch_is_stored_at_once_and_a_fast_one_at_the_next_timer(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "CHECKPOINT_INTERVAL_S", 0.3)
    job = _claimed()
    with CheckpointWriter(job, "w1", epochs=50) as writer:
        time.sleep(0.5)  # an epoch longer than the interval: the writer's timer has passed
        _hand_over(writer, 1)  # so this hand-over must wake it
        assert _wait_stored(job, b"checkpoint of epoch 1") == b"checkpoint of epoch 1"
        _hand_over(writer, 2)  # before the next timer: stored when it fires, unasked
        assert _wait_stored(job, b"checkpoint of epoch 2") == b"checkpoint of epoch 2"
        deadline = time.monotonic() + 60  # the rows follow their checkpoint, in a transaction
        while len(_progress_epochs(job.id)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _progress_epochs(job.id) == [1, 2]
        writer.close(checkpoint=False, progress=False)


def test_success_records_progress_but_not_the_last_checkpoint(db: str) -> None:
    job = _claimed()
    with CheckpointWriter(job, "w1", epochs=3) as writer:
        for epoch in (1, 2, 3):
            _hand_over(writer, epoch)
        # the last epoch's progress is stored at once (while the job finishes), alone
        deadline = time.monotonic() + 10
        while len(_progress_epochs(job.id)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _progress_epochs(job.id) == [1, 2, 3] and _stored(job) is None
        writer.finish()
    assert _stored(job) is None
    assert _progress_epochs(job.id) == [1, 2, 3]


def test_a_stop_after_the_last_epoch_still_stores_its_checkpoint(db: str) -> None:
    job = _claimed()
    with CheckpointWriter(job, "w1", epochs=2) as writer:
        _hand_over(writer, 1)
        _hand_over(writer, 2)
        deadline = time.monotonic() + 10
        while len(_progress_epochs(job.id)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert _stored(job) is None  # held back: success would not need it
        writer.close()  # e.g. canceled while finishing
    assert _stored(job) == b"checkpoint of epoch 2"
    assert _progress_epochs(job.id) == [1, 2]


def test_lost_lease_stores_nothing_and_stops_training(db: str) -> None:
    from core.ml.errors import TrainingStopped

    job = _claimed()
    with CheckpointWriter(job, "w1", epochs=10) as writer:
        _hand_over(writer, 1)
        writer.close()
    assert _stored(job) == b"checkpoint of epoch 1"
    with session_scope() as s:  # the reconciler gave the job to another attempt
        s.execute(update(Job).where(Job.id == job.id).values(lease_owner="someone-else"))

    with CheckpointWriter(job, "w1", epochs=10) as writer:
        _hand_over(writer, 2)
        writer.close()  # the owner check refuses the store
        assert writer.stop_reason == "lease_lost"
        with pytest.raises(TrainingStopped, match="lease_lost"):
            _hand_over(writer, 3)  # the training thread is stopped at its next hand-over
        with pytest.raises(TrainingStopped, match="lease_lost"):
            writer.finish()
    assert _stored(job) == b"checkpoint of epoch 1"
    assert _progress_epochs(job.id) == [1]


def test_dropped_on_lease_loss_and_nothing_after_the_terminal_transition(db: str) -> None:
    job = _claimed()
    writer = CheckpointWriter(job, "w1", epochs=10).__enter__()
    _hand_over(writer, 1)
    writer.close(checkpoint=False, progress=False)  # lease lost: drop what waits
    assert _stored(job) is None and _progress_epochs(job.id) == []

    with session_scope() as s:  # the job ended (e.g. canceled) while a store was waiting
        assert job_service.finish_canceled(s, job_id=job.id, owner="w1")
    with CheckpointWriter(job, "w1", epochs=10) as writer:
        _hand_over(writer, 2)
        writer.close()
        assert writer.stop_reason == "lease_lost"
    with session_scope() as s:
        key = job_artifact_key(job.id, CHECKPOINT_NAME)
        assert s.scalar(select(Artifact).where(Artifact.key == key)) is None
    assert _progress_epochs(job.id) == []
    assert [e.get("status") for e in status_events(job.id)][-1] == "canceled"
