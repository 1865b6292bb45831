"""Run one job: claim, train through core.ml with a lease, store the result in one transaction."""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from core import __version__
from core.config import Settings
from core.db import session_scope
from core.ids import utcnow
from core.models import Dataset, Job, JobEvent
from core.queue import enqueue_job
from core.services import jobs as job_service
from core.storage import get_artifact, job_artifact_key, put_artifact
from core.timeutil import as_utc
from worker.lease import SHUTDOWN, TIMEOUT, LeaseKeeper

logger = logging.getLogger("softlabel.worker")
CHECKPOINT_NAME = "checkpoint.pt"  # the name is historical: the bytes are safetensors
# CheckpointWriter stores the newest checkpoint (and the progress rows up to it) at most once
# per CHECKPOINT_INTERVAL_S, and at most 1/CHECKPOINT_DUTY of the time (large checkpoints):
# epochs at least that long are each stored; faster ones coalesce (latest wins).
CHECKPOINT_INTERVAL_S = 1.0
CHECKPOINT_DUTY = 20.0
T = TypeVar("T")


def worker_identity() -> str:
    """A unique lease owner name for this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class ClaimedJob:
    """What the runner needs from the job row, read once after the claim."""

    id: str
    tenant_id: str
    spec: dict[str, Any]
    attempt: int
    dataset_id: str | None
    queued_s: float


def is_transient(exc: BaseException) -> bool:
    """True for database errors that a retry on a fresh connection may cure."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_db_retry(fn: Callable[[], T], *, what: str, deadline_s: float = 60.0) -> T:
    """Call `fn` (one whole transaction), retrying transient DB errors with backoff."""
    give_up = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > give_up:
                raise
            logger.warning("%s: database unavailable (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 3.0)


def claim(job_id: str, *, owner: str, settings: Settings) -> ClaimedJob | None:
    """Claim the job (queued → running); None when another delivery got it or it ended."""
    with session_scope() as session:
        if not job_service.claim_job(
            session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds
        ):
            return None
        job = job_service.get_job_by_id(session, job_id=job_id)
        assert job is not None
        queued_at = as_utc(job.queued_at)
        started = as_utc(job.started_at) or utcnow()
        queued_s = (started - queued_at).total_seconds() if queued_at else 0.0
        return ClaimedJob(
            job.id, job.tenant_id, job.spec, job.attempt, job.dataset_id, max(queued_s, 0.0)
        )


def load_upload(dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The (X, y) arrays of an uploaded dataset, read pickle-free from the artifact store."""

    def read() -> bytes | None:
        with session_scope() as session:
            found = get_artifact(session, key=f"datasets/{dataset_id}.npz")
        return found[1] if found else None

    blob = with_db_retry(read, what="load dataset")
    if blob is None:
        raise FileNotFoundError(f"dataset {dataset_id} has no stored data")
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return npz["X"], npz["y"]


def upload_class_names(dataset_id: str | None) -> list[str] | None:
    """The class names stored with an uploaded dataset (None for builtin/synthetic data)."""
    if dataset_id is None:
        return None

    def read() -> list[str] | None:
        with session_scope() as session:
            row = session.get(Dataset, dataset_id)
            names = (row.info or {}).get("class_names") if row is not None else None
        return [str(n) for n in names] if names else None

    return with_db_retry(read, what="load dataset class names")


def _write_checkpoint(job: ClaimedJob, owner: str, blob: bytes) -> None:
    """Store the checkpoint if this worker still owns the job; else stop (lease lost)."""
    from core.ml.errors import TrainingStopped

    def write() -> None:
        with session_scope() as session:
            row = session.execute(
                select(Job.status, Job.lease_owner).where(Job.id == job.id).with_for_update()
            ).one_or_none()
            if row is None or row.status != "running" or row.lease_owner != owner:
                raise TrainingStopped("lease_lost")  # another attempt owns the job now
            put_artifact(
                session,
                key=job_artifact_key(job.id, CHECKPOINT_NAME),
                data=blob,
                tenant_id=job.tenant_id,
                job_id=job.id,
            )

    with_db_retry(write, what="save checkpoint")


def _read_checkpoint(job: ClaimedJob) -> bytes | None:
    def read() -> bytes | None:
        with session_scope() as session:
            found = get_artifact(session, key=job_artifact_key(job.id, CHECKPOINT_NAME))
        return found[1] if found else None

    return with_db_retry(read, what="load checkpoint")


def record_progress_row(job: ClaimedJob, owner: str, epochs: int, row: dict[str, Any]) -> None:
    """Record one epoch's progress row (owner-checked)."""
    _record_progress_rows(job, owner, epochs, [row])


def _record_progress_rows(
    job: ClaimedJob, owner: str, epochs: int, rows: list[dict[str, Any]]
) -> None:
    """Record epoch rows in order, in one transaction (one progress event per epoch).

    The job row gets the newest; every row gets its event, the earlier ones in one INSERT.
    Nothing is recorded when the job is no longer running under this owner.
    """
    progress = [{"epoch": row.get("epoch"), "epochs": epochs, "latest": row} for row in rows]

    def write() -> None:
        with session_scope() as session:
            session.add_all(
                [JobEvent(job_id=job.id, kind="progress", data=p) for p in progress[:-1]]
            )
            if not job_service.record_progress(
                session, job_id=job.id, owner=owner, progress=progress[-1]
            ):
                session.rollback()  # not ours any more: no events either

    try:
        with_db_retry(write, what="record progress", deadline_s=5.0)
    except Exception as exc:
        if not is_transient(exc):
            raise
        logger.warning("progress not recorded: %s", exc, extra={"job_id": job.id})


class CheckpointWriter:
    """Stores checkpoints and progress on a thread of its own, so training never waits on them.

    The training thread hands over each epoch's checkpoint (a frozen copy, encoded here
    only if stored) and progress row and goes on at once. The writer stores the newest
    checkpoint (one still waiting when a newer one arrives is replaced: latest wins), then
    the progress rows up to it, so a running job whose progress shows epoch k always has a
    stored checkpoint of epoch k or later.
    Stores are paced: the first after CHECKPOINT_INTERVAL_S, then at most once per
    CHECKPOINT_INTERVAL_S and at most 1/CHECKPOINT_DUTY of the time; epochs longer than
    that are each stored. A worker killed without warning loses at most that interval plus
    one epoch of work, and the next attempt resumes exactly (every checkpoint is a complete
    epoch's state). Every store is owner-checked (`_write_checkpoint`); a lost lease stops
    the writer and, through `stop_reason`, the training.

    `close` ends it before any terminal transition (then joins the thread, so nothing is
    written after the job's final transaction): a stop (cancel, shutdown, timeout) or a
    failure stores everything waiting; a lost lease drops it; success stores the progress
    rows and drops the last checkpoint, which the result transaction makes useless. (The
    last epoch's progress is stored at once, while the job is evaluated and finished; only
    then may progress be ahead of the stored checkpoint.)
    """

    def __init__(self, job: ClaimedJob, owner: str, epochs: int) -> None:
        self.job, self.owner, self.epochs = job, owner, epochs
        self.stop_reason: str | None = None
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._checkpoint: Callable[[], bytes] | None = None
        self._rows: list[dict[str, Any]] = []
        self._closing = False
        self._rows_now = False  # the last epoch's row is here: store the progress now
        self._last_epoch = False  # after it, the checkpoint waits for a stop (if any)
        self._thread = threading.Thread(target=self._run, name=f"checkpoints-{job.id}", daemon=True)

    def __enter__(self) -> CheckpointWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def checkpoint_ready(self, encode: Callable[[], bytes]) -> None:
        """Training thread: queue the newest checkpoint (replacing one not yet stored).

        `encode` gives its bytes; it is called here on the writer's thread, and only for the
        checkpoints that are stored.
        """
        self._raise_if_failed()
        with self._cond:
            self._checkpoint = encode
            self._cond.notify()

    def record_progress(self, row: dict[str, Any]) -> None:
        """Training thread: queue an epoch's progress row."""
        self._raise_if_failed()
        with self._cond:
            self._rows.append(row)
            if int(row.get("epoch") or 0) >= self.epochs:
                self._rows_now = self._last_epoch = True
            self._cond.notify()

    def _raise_if_failed(self) -> None:
        from core.ml.errors import TrainingStopped

        if self.stop_reason:
            raise TrainingStopped(self.stop_reason)
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Training succeeded: store the progress rows (not the last checkpoint), then stop.

        Raises TrainingStopped("lease_lost") or a storage error, as a store during training
        would have.
        """
        self.close(checkpoint=False)
        self._raise_if_failed()

    def close(self, *, checkpoint: bool = True, progress: bool = True) -> None:
        """Store what waits (minus what is switched off here), stop the thread; idempotent."""
        with self._cond:
            if not checkpoint:
                self._checkpoint = None
            if not progress:
                self._rows = []
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        from core.ml.errors import TrainingStopped

        next_at = time.monotonic() + CHECKPOINT_INTERVAL_S
        while True:
            with self._cond:
                while not (self._closing or self._rows_now):
                    waiting = not self._last_epoch and (
                        self._checkpoint is not None or bool(self._rows)
                    )
                    now = time.monotonic()
                    if waiting and now >= next_at:
                        break
                    self._cond.wait(next_at - now if waiting else None)
                encode, rows = self._checkpoint, self._rows
                if self._closing or not self._rows_now:
                    self._checkpoint = None
                else:
                    encode = None  # the last epoch's progress, while the job finishes
                self._rows, self._rows_now = [], False
            if encode is None and not rows:
                return  # closing with nothing left
            started = time.monotonic()
            try:
                if encode is not None:
                    _write_checkpoint(self.job, self.owner, encode())
                if rows:
                    _record_progress_rows(self.job, self.owner, self.epochs, rows)
            except TrainingStopped as stop:  # the lease is gone: store nothing more
                self.stop_reason = stop.reason
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                self.error = exc
            if self.stop_reason or self.error is not None:
                with self._cond:
                    self._checkpoint, self._rows = None, []
                return
            spent = time.monotonic() - started
            next_at = started + max(CHECKPOINT_INTERVAL_S, CHECKPOINT_DUTY * spent)


def _owned_by(job_id: str, owner: str) -> bool:
    """Whether the job is still running under our lease (after a commit of unknown outcome)."""
    with session_scope() as session:
        row = session.get(Job, job_id)
        return row is not None and row.status == "running" and row.lease_owner == owner


def _transition(job_id: str, owner: str, what: str, apply: Callable[[Any], bool]) -> bool:
    """Run an owner-checked transition; a commit whose outcome is unknown is checked first."""
    give_up = time.monotonic() + 60.0
    delay = 0.2
    while True:
        try:
            with session_scope() as session:
                return apply(session)
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > give_up:
                raise
            logger.warning("%s: commit failed (%s); checking before retrying", what, exc)
        time.sleep(delay)
        delay = min(delay * 2, 3.0)
        try:
            if not with_db_retry(lambda: _owned_by(job_id, owner), what=f"{what} check"):
                return False  # it committed after all, or the lease went to another attempt
        except Exception as exc:  # noqa: BLE001 - give the transition itself another try
            logger.warning("%s: check failed (%s)", what, exc)


def end_attempt(job_id: str, owner: str, status: str, reason: str = "", message: str = "") -> bool:
    """End this worker's attempt: canceled, released to the queue, or failed with a reason."""

    def apply(session: Any) -> bool:
        if status == "canceled":
            return job_service.finish_canceled(session, job_id=job_id, owner=owner)
        if status == "queued":
            return job_service.release_job(session, job_id=job_id, owner=owner)
        return job_service.fail_job(
            session, job_id=job_id, owner=owner, reason=reason, message=message
        )

    return _transition(job_id, owner, f"end {status}", apply)


def _release(job_id: str, owner: str) -> None:
    """Give the job back to the queue (soft shutdown) and re-enqueue it after the commit."""
    if not end_attempt(job_id, owner, "queued"):
        return
    try:
        enqueue_job(job_id)

        def mark() -> None:
            with session_scope() as session:
                job_service.mark_enqueued(session, job_ids=[job_id])

        with_db_retry(mark, what="mark enqueued", deadline_s=5.0)
    except Exception as exc:  # noqa: BLE001 - the reconciler re-enqueues it after the grace
        logger.warning("re-enqueue after release failed: %s", exc, extra={"job_id": job_id})


def store_result(
    job: ClaimedJob, owner: str, result: dict[str, Any], artifacts: dict[str, bytes]
) -> bool:
    """Artifacts, result, status and finished_at in one transaction (owner-checked)."""

    def apply(session: Any) -> bool:
        links = {}
        for name, data in artifacts.items():
            put_artifact(
                session,
                key=job_artifact_key(job.id, name),
                data=data,
                tenant_id=job.tenant_id,
                job_id=job.id,
            )
            links[name] = f"/v1/jobs/{job.id}/artifacts/{name}"
        document = {
            "job_id": job.id,
            "spec": job.spec,
            **result,
            "artifacts": links,
            "timing": {"queued_s": round(job.queued_s, 4), **result.get("timing", {})},
            "environment": {**result.get("environment", {}), "version": __version__},
            "attempt": job.attempt,
        }
        stored = job_service.complete_job(session, job_id=job.id, owner=owner, result=document)
        if not stored:
            session.rollback()  # the lease was lost: another attempt owns the job now
        return stored

    if _transition(job.id, owner, "store result", apply):
        return True

    def ours() -> bool:
        with session_scope() as session:
            row = session.get(Job, job.id)
            return (
                row is not None
                and row.status == "succeeded"
                and (row.result or {}).get("attempt") == job.attempt
            )

    return with_db_retry(ours, what="verify result")


def timeout_message(settings: Settings) -> str:
    """The failure message of a job that hit its time limit."""
    return (
        f"The job exceeded the time limit of {settings.task_soft_time_limit} s; "
        "use fewer epochs or a smaller model"
    )


def _hard_timeout_message() -> str:
    from core.config import get_settings

    return (
        f"The job exceeded the hard time limit of {get_settings().task_time_limit} s and was "
        "stopped; use fewer epochs or a smaller model"
    )


def execute_job(job_id: str, *, settings: Settings, owner: str | None = None) -> str:
    """Run a job end to end; returns the outcome ('succeeded', 'failed', 'not_claimed', ...)."""
    from celery.exceptions import SoftTimeLimitExceeded

    import core.ml.experiment  # noqa: F401 - load torch before the lease clock starts

    owner = owner or worker_identity()
    job = claim(job_id, owner=owner, settings=settings)
    if job is None:
        logger.info("delivery could not claim the job; nothing to do", extra={"job_id": job_id})
        return "not_claimed"
    try:
        return _train_and_store(job, owner, settings)
    except SoftTimeLimitExceeded:
        # The checkpoint of the last finished epoch is stored; the attempt ends here.
        end_attempt(job.id, owner, "failed", "timeout", timeout_message(settings))
        return "failed"
    finally:
        if (job.spec.get("tags") or {}).get("sweep_id"):  # a sweep trial run alone ends its sweep
            from worker.group_runner import finalize_sweep_of

            finalize_sweep_of(job.id)


def _train_and_store(job: ClaimedJob, owner: str, settings: Settings) -> str:
    """Train a claimed job under its lease and store the outcome."""
    from celery.exceptions import SoftTimeLimitExceeded

    from core.ml.errors import (
        DeviceUnavailableError,
        InvalidDatasetError,
        SpecError,
        TrainingDivergedError,
        TrainingStopped,
    )
    from core.ml.experiment import run_experiment
    from core.ml.train import TrainHooks

    epochs = int(job.spec["training"]["epochs"])
    with (
        LeaseKeeper(job_id=job.id, owner=owner, settings=settings) as lease,
        CheckpointWriter(job, owner, epochs) as writer,
    ):
        hooks = TrainHooks(
            on_epoch=writer.record_progress,
            should_stop=lambda: lease.stop_reason or writer.stop_reason,
            load_checkpoint=lambda: _read_checkpoint(job),
            checkpoint_ready=writer.checkpoint_ready,
        )
        try:
            arrays = load_upload(job.dataset_id) if job.dataset_id else None
            output = run_experiment(
                job.spec,
                arrays=arrays,
                hooks=hooks,
                class_names=upload_class_names(job.dataset_id),
            )
            writer.finish()  # the progress rows, before the result
        except TrainingStopped as stop:
            # a lost lease writes nothing more; cancel, shutdown and timeout keep the latest
            lost = stop.reason == "lease_lost"
            writer.close(checkpoint=not lost, progress=not lost)
            return _stopped(job.id, owner, stop.reason)
        except TrainingDivergedError as exc:
            _close_quietly(writer)
            end_attempt(job.id, owner, "failed", "diverged", str(exc))
            return "failed"
        except (InvalidDatasetError, SpecError) as exc:
            _close_quietly(writer)
            end_attempt(job.id, owner, "failed", "invalid_dataset", str(exc))
            return "failed"
        except DeviceUnavailableError as exc:
            _close_quietly(writer)
            end_attempt(job.id, owner, "failed", "device_unavailable", str(exc))
            return "failed"
        except SoftTimeLimitExceeded:
            _close_quietly(writer)  # execute_job ends the job as timed out
            raise
        except Exception as exc:
            logger.exception("job failed", extra={"job_id": job.id})
            _close_quietly(writer)
            end_attempt(job.id, owner, "failed", "internal", f"{type(exc).__name__}: {exc}")
            return "failed"
        lease.renew_once()  # a cancel or a lost lease that came during the last epoch
        if lease.stop_reason:
            return _stopped(job.id, owner, lease.stop_reason)
    stored = store_result(job, owner, output.result, output.artifacts)
    return "succeeded" if stored else "lease_lost"


def _close_quietly(writer: CheckpointWriter) -> None:
    """Store what waits (owner-checked) before a failure is recorded; its errors are logged."""
    writer.close()
    if writer.error is not None:
        logger.warning("checkpoint writer: %s", writer.error, extra={"job_id": writer.job.id})


def _stopped(job_id: str, owner: str, reason: str) -> str:
    """End an attempt that was stopped from outside: cancel, shutdown or a lost lease."""
    if reason == "canceled":
        end_attempt(job_id, owner, "canceled")
        return "canceled"
    if reason == SHUTDOWN:
        _release(job_id, owner)
        return "released"
    if reason == TIMEOUT:  # the hard time limit: SIGTERM now, SIGKILL in a moment
        end_attempt(job_id, owner, "failed", "timeout", _hard_timeout_message())
        return "failed"
    return "lease_lost"  # another attempt owns the job: write nothing
