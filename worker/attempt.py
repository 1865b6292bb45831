"""One attempt of a job, shared by the single-job and the group runner.

Claim, load the data, end the attempt (failed, canceled, released to the queue) or store
its result; each ending is one owner-checked transaction that announces terminal jobs
(webhooks, sweep reports) through the after-commit effects. FAILURES maps the exceptions
of core.ml to failure reasons, for single jobs and groups alike.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from core import __version__
from core.config import Settings, get_settings
from core.db import is_transient, session_scope, with_db_retry
from core.ml.errors import (
    DeviceUnavailableError,
    InvalidDatasetError,
    SpecError,
    TrainingDivergedError,
)
from core.ml.figures import figure_names
from core.ml.npz_map import load_npz_mapped
from core.services import datasets as dataset_service
from core.services import fairness, job_reads
from core.services import jobs as job_service
from core.services import sweeps as sweep_service
from core.services.effects import effects
from core.services.jobs import ClaimedJob
from core.states import FailureReason, JobStatus, StopReason
from worker.checkpoints import store_job_artifact

logger = logging.getLogger("softlabel.worker")
# The one table from an exception of core.ml to the failure reason of its job (or group).
FAILURES: tuple[tuple[type[BaseException], FailureReason], ...] = (
    (TrainingDivergedError, FailureReason.DIVERGED),
    (InvalidDatasetError, FailureReason.INVALID_DATASET),
    (SpecError, FailureReason.INVALID_DATASET),
    (DeviceUnavailableError, FailureReason.DEVICE_UNAVAILABLE),
)


def failure_of(exc: BaseException) -> tuple[FailureReason, str]:
    """The failure reason and message of a job whose training raised `exc`."""
    for kind, reason in FAILURES:
        if isinstance(exc, kind):
            return reason, str(exc)
    return FailureReason.INTERNAL, f"{type(exc).__name__}: {exc}"


def worker_identity() -> str:
    """A unique lease owner name for this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(
    job_ids: list[str], *, owner: str, settings: Settings, fair_share: bool = False
) -> list[ClaimedJob]:
    """Claim every claimable job of `job_ids` (queued → running); the sweeps start running.

    With `fair_share`, raise FairShareDeferred instead when the tenant has its fair share of
    workers while another tenant waits (checked under a tenant lock, in the same transaction).
    """
    with session_scope() as session:
        cap = settings.max_running_jobs_per_tenant
        if fair_share and fairness.must_yield(session, job_id=job_ids[0], cap=cap):
            raise fairness.FairShareDeferred(job_ids[0])
        claimed = job_service.claim_group(
            session, job_ids=job_ids, owner=owner, lease_seconds=settings.lease_seconds
        )
        sweep_service.mark_running(
            session, sweep_ids={job.sweep_id for job in claimed if job.sweep_id}
        )
        return claimed


def load_upload(dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The (X, y) arrays of an uploaded dataset, memory-mapped, pickle-free.

    The canonical NPZ streams from the artifact store into a temporary file a chunk at a
    time; its arrays are then mapped from that file (unlinked at once: the maps keep it).
    """
    fd, name = tempfile.mkstemp(prefix="softlabel-dataset-", suffix=".npz")
    os.close(fd)
    path = Path(name)

    def read() -> bool:
        with session_scope() as session:
            return dataset_service.copy_arrays_to(session, dataset_id=dataset_id, dest=path)

    try:
        if not with_db_retry(read, what="load dataset"):
            raise FileNotFoundError(f"dataset {dataset_id} has no stored data")
        arrays = load_npz_mapped(path)
    finally:
        path.unlink(missing_ok=True)
    return arrays["X"], arrays["y"]


def upload_facts(dataset_id: str | None) -> dict[str, Any]:
    """An upload's class names and layout as sent, as run_experiment's keyword arguments."""
    if dataset_id is None:
        return {"class_names": None, "uploaded_layout": None}

    def read() -> tuple[list[str] | None, str | None]:
        with session_scope() as session:
            return dataset_service.upload_facts_of(session, dataset_id=dataset_id)

    names, layout = with_db_retry(read, what="load dataset facts")
    return {"class_names": names, "uploaded_layout": layout}


def _owned_by(job_ids: list[str], owner: str) -> bool:
    """Whether any of the jobs still runs under our lease (after a commit of unknown outcome)."""
    with session_scope() as session:
        return any(job_service.is_owned(session, job_id=i, owner=owner) for i in job_ids)


def _transition(job_ids: list[str], owner: str, what: str, apply: Callable[[Session], bool]
                ) -> bool:
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
            if not with_db_retry(lambda: _owned_by(job_ids, owner), what=f"{what} check"):
                return False  # it committed after all, or the lease went to another attempt
        except Exception as exc:  # noqa: BLE001 - give the transition itself another try
            logger.warning("%s: check failed (%s)", what, exc)


def end_attempt(
    job_id: str,
    owner: str,
    status: JobStatus,
    reason: FailureReason = FailureReason.INTERNAL,
    message: str = "",
) -> bool:
    """End this worker's attempt: canceled, failed with a reason, or released to the queue.

    A released job is enqueued again after the commit; a terminal one is announced.
    """

    def apply(session: Session) -> bool:
        if status == JobStatus.QUEUED:
            done = job_service.release_job(session, job_id=job_id, owner=owner)
            if done:
                effects(session, in_worker=True).enqueue_job(job_id)
            return done
        if status == JobStatus.CANCELED:
            done = job_service.finish_canceled(session, job_id=job_id, owner=owner)
        else:
            done = job_service.fail_job(
                session, job_id=job_id, owner=owner, reason=reason, message=message
            )
        if done:
            effects(session, in_worker=True).announce_terminal(job_id)
        return done

    return _transition([job_id], owner, f"end {status}", apply)


def fail(job: ClaimedJob, owner: str, exc: BaseException) -> None:
    """End the attempt failed with the reason FAILURES gives `exc` (unknown ones logged)."""
    reason, message = failure_of(exc)
    if reason == FailureReason.INTERNAL:
        logger.error("job failed", exc_info=exc, extra={"job_id": job.id})
    end_attempt(job.id, owner, JobStatus.FAILED, reason, message)


def release_group(jobs: list[ClaimedJob], owner: str) -> None:
    """Give the jobs back to the queue (soft shutdown) and re-enqueue them as one task."""

    def apply(session: Session) -> bool:
        released = [
            job.id for job in jobs if job_service.release_job(session, job_id=job.id, owner=owner)
        ]
        effects(session, in_worker=True).enqueue_group(released)
        return bool(released)

    _transition([job.id for job in jobs], owner, "release", apply)


def _result_document(
    job: ClaimedJob, result: dict[str, Any], links: dict[str, str]
) -> dict[str, Any]:
    timing = result.get("timing") or {}
    environment = result.get("environment") or {}
    return {
        "job_id": job.id,
        "spec": job.spec,
        **result,
        "artifacts": links,
        "timing": {"queued_s": round(job.queued_s, 4), **timing},
        "environment": {**environment, "version": __version__},
        "attempt": job.attempt,
    }


def store_result(
    job: ClaimedJob, owner: str, result: dict[str, Any], artifacts: dict[str, bytes]
) -> str:
    """Artifacts, result, status and finished_at in one transaction (owner-checked).

    The outcome: succeeded; canceled (a cancel came while the job trained, so nothing of
    the result is kept); or lease_lost (another attempt owns the job: nothing written).
    """
    return store_results([(job, result, artifacts)], owner)[0]


Finished = tuple[ClaimedJob, dict[str, Any], dict[str, bytes]]  # job, result, artifacts


def store_results(finished: list[Finished], owner: str) -> list[str]:
    """`store_result` of several jobs (a stacked group's trials) in one transaction.

    Each job is owner-checked on its own: one whose lease was lost stores nothing, one with
    a cancel request ends canceled; the others are stored, and all are announced together.
    """
    outcomes: dict[str, str] = {}

    def apply(session: Session) -> bool:
        outcomes.clear()
        for job, result, artifacts in finished:
            outcomes[job.id] = _store_in(session, job, owner, result, artifacts)
        return any(o != StopReason.LEASE_LOST for o in outcomes.values())

    if not _transition([job.id for job, _, _ in finished], owner, "store result", apply):
        outcomes.clear()  # nothing stored, or a commit of unknown outcome: verify each

    def ours(job: ClaimedJob) -> Callable[[], str]:  # a lost one may still have committed
        def read() -> str:
            with session_scope() as session:
                ended = job_reads.ended_in_attempt(session, job_id=job.id, attempt=job.attempt)
            return ended or StopReason.LEASE_LOST
        return read

    return [outcomes.get(job.id) or with_db_retry(ours(job), what="verify result")
            for job, _, _ in finished]


def _store_in(session: Session, job: ClaimedJob, owner: str, result: dict[str, Any],
              artifacts: dict[str, bytes]) -> str:
    """One job's result, artifacts and terminal announcement on `session`; its outcome."""
    names = [*artifacts, *figure_names(result)]  # figures: drawn by the API on first request
    links = {name: f"/v1/jobs/{job.id}/artifacts/{name}" for name in names}
    document = _result_document(job, result, links)
    ended = job_service.complete_job(session, job_id=job.id, owner=owner, result=document)
    if ended is None:
        return StopReason.LEASE_LOST  # another attempt owns the job now: write nothing
    if ended == JobStatus.SUCCEEDED:
        for name, data in artifacts.items():
            store_job_artifact(session, job, name, data)
    effects(session, in_worker=True).announce_terminal(job.id)
    return ended


def timeout_message(settings: Settings) -> str:
    """The failure message of a job that hit its (soft) time limit."""
    return (
        f"The job exceeded the time limit of {settings.task_soft_time_limit} s; "
        "use fewer epochs or a smaller model"
    )


def hard_timeout_message() -> str:
    """The failure message of a job stopped at the hard time limit."""
    return (
        f"The job exceeded the hard time limit of {get_settings().task_time_limit} s and was "
        "stopped; use fewer epochs or a smaller model"
    )
