"""Checkpoints and progress of a running job, stored on a thread of their own (owner-checked)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from sqlalchemy.orm import Session

from core.db import is_transient, session_scope, with_db_retry
from core.ml.errors import TrainingStopped
from core.services import jobs as job_service
from core.services.jobs import ClaimedJob
from core.states import StopReason
from core.storage import get_artifact, job_artifact_key, put_artifact

logger = logging.getLogger("softlabel.worker")
CHECKPOINT_NAME = "checkpoint.safetensors"
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"  # the same safetensors bytes, stored before the rename
# CheckpointWriter stores the newest checkpoint (and the progress rows up to it) at most once
# per CHECKPOINT_INTERVAL_S, and at most 1/CHECKPOINT_DUTY of the time (large checkpoints):
# epochs at least that long are each stored; faster ones coalesce (latest wins).
CHECKPOINT_INTERVAL_S = 1.0
CHECKPOINT_DUTY = 20.0


def store_job_artifact(session: Session, job: ClaimedJob, name: str, data: bytes) -> None:
    """Store one of a job's artifacts under its key (the caller's transaction)."""
    put_artifact(
        session,
        key=job_artifact_key(job.id, name),
        data=data,
        tenant_id=job.tenant_id,
        job_id=job.id,
    )


def write_checkpoint(job: ClaimedJob, owner: str, blob: bytes) -> None:
    """Store the checkpoint if this worker still owns the job; else stop (lease lost)."""

    def write() -> None:
        with session_scope() as session:
            if not job_service.is_owned(session, job_id=job.id, owner=owner, lock=True):
                raise TrainingStopped(StopReason.LEASE_LOST)  # another attempt owns the job
            store_job_artifact(session, job, CHECKPOINT_NAME, blob)

    with_db_retry(write, what="save checkpoint")


def read_checkpoint(job: ClaimedJob) -> bytes | None:
    """The job's latest stored checkpoint (under its current or its old name), or None."""

    def read() -> bytes | None:
        with session_scope() as session:
            for name in (CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME):
                found = get_artifact(session, key=job_artifact_key(job.id, name))
                if found is not None:
                    return found[1]
        return None

    return with_db_retry(read, what="load checkpoint")


def record_progress_row(job: ClaimedJob, owner: str, epochs: int, row: dict[str, Any]) -> None:
    """Record one epoch's progress row (owner-checked)."""
    record_progress_rows(job, owner, epochs, [row])


def progress_entries(rows: list[dict[str, Any]], epochs: int) -> list[dict[str, Any]]:
    """The job row's `progress` entries of epoch rows (epoch, epochs, the row itself)."""
    return [{"epoch": row.get("epoch"), "epochs": epochs, "latest": row} for row in rows]


def record_progress_rows(
    job: ClaimedJob, owner: str, epochs: int, rows: list[dict[str, Any]]
) -> None:
    """Record epoch rows in order, in one transaction (one progress event per epoch).

    The job row gets the newest; nothing is recorded when the job is no longer running
    under this owner. A database that stays down only costs these rows (logged).
    """
    progress = progress_entries(rows, epochs)

    def write() -> None:
        with session_scope() as session:
            job_service.record_progress(session, job_id=job.id, owner=owner, progress=progress)

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
    epoch's state). Every store is owner-checked (`write_checkpoint`); a lost lease stops
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
        self._rows: list[Any] = []  # progress rows (a group writer: (trial, row) pairs)
        self._closing = False
        self._rows_now = False  # the last epoch's row is here: store the progress now
        self._last_epoch = False  # after it, the checkpoint waits for a stop (if any)
        # When the writer next stores; before then it sleeps on a timer, so items arriving
        # earlier need not wake it (a GIL handoff per epoch on the training thread).
        self._next_at = time.monotonic() + CHECKPOINT_INTERVAL_S
        self._thread = threading.Thread(target=self._run, name=f"checkpoints-{job.id}", daemon=True)

    def __enter__(self) -> Self:
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
            self._wake_if_due()

    def record_progress(self, row: dict[str, Any]) -> None:
        """Training thread: queue an epoch's progress row."""
        self._queue_row(row, int(row.get("epoch") or 0))

    def _queue_row(self, item: Any, epoch: int) -> None:
        """Queue one item for `_write_rows`; the last epoch's are stored at once."""
        self._raise_if_failed()
        with self._cond:
            self._rows.append(item)
            if epoch >= self.epochs:
                self._rows_now = self._last_epoch = True
            self._wake_if_due()

    def _wake_if_due(self) -> None:
        """Wake the writer (lock held) if it has something to do now, not at its next timer."""
        if self._rows_now or time.monotonic() >= self._next_at:
            self._cond.notify()

    def _raise_if_failed(self) -> None:
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

    def _write_checkpoint(self, blob: bytes) -> None:
        write_checkpoint(self.job, self.owner, blob)

    def _write_rows(self, rows: list[Any]) -> None:
        record_progress_rows(self.job, self.owner, self.epochs, rows)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._rows_now):
                    waiting = not self._last_epoch and (
                        self._checkpoint is not None or bool(self._rows)
                    )
                    now = time.monotonic()
                    if waiting and now >= self._next_at:
                        break
                    # until the timer (items before it wait for it); after it, until an item
                    self._cond.wait(self._next_at - now if now < self._next_at else None)
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
                    self._write_checkpoint(encode())
                if rows:
                    self._write_rows(rows)
            except TrainingStopped as stop:  # the lease is gone: store nothing more
                self.stop_reason = stop.reason
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                self.error = exc
            if self.stop_reason or self.error is not None:
                with self._cond:
                    self._checkpoint, self._rows = None, []
                return
            spent = time.monotonic() - started
            with self._cond:
                self._next_at = started + max(CHECKPOINT_INTERVAL_S, CHECKPOINT_DUTY * spent)


def close_quietly(writer: CheckpointWriter) -> None:
    """Store what waits (owner-checked) before a failure is recorded; its errors are logged."""
    writer.close()
    if writer.error is not None:
        logger.warning("checkpoint writer: %s", writer.error, extra={"job_id": writer.job.id})
