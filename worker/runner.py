"""Run one job: claim, train through core.ml under a lease, store the result in one transaction."""

from __future__ import annotations

import logging

from core.config import Settings
from core.ml.errors import TrainingStopped
from core.services.fairness import FAIR_SHARE_RETRY_S, FairShareDeferred
from core.services.jobs import ClaimedJob
from core.states import FailureReason, JobStatus, StopReason
from worker.attempt import (
    claim,
    end_attempt,
    fail,
    hard_timeout_message,
    load_upload,
    release_group,
    store_result,
    timeout_message,
    upload_facts,
    worker_identity,
)
from worker.checkpoints import CheckpointWriter, close_quietly, read_checkpoint
from worker.lease import LeaseKeeper

logger = logging.getLogger("softlabel.worker")
DEFERRED = "deferred"


def requeue_deferred(job_id: str) -> None:
    """Put a deferred job's task back on the training queue, after a short delay."""
    from core.queue import QUEUE_TRAINING, TASK_RUN_JOB, get_celery

    get_celery().send_task(
        TASK_RUN_JOB, args=[job_id], queue=QUEUE_TRAINING, countdown=FAIR_SHARE_RETRY_S
    )
    logger.info("tenant at its fair share: job deferred", extra={"job_id": job_id})


def execute_job(job_id: str, *, settings: Settings, owner: str | None = None) -> str:
    """Run a job end to end; returns the outcome ('succeeded', 'failed', 'not_claimed', ...)."""
    from celery.exceptions import SoftTimeLimitExceeded

    import core.ml.experiment  # noqa: F401 - load torch before the lease clock starts
    from core.ml.train import preload_training

    preload_training()  # and what the first optimiser imports
    owner = owner or worker_identity()
    try:
        claimed = claim([job_id], owner=owner, settings=settings, fair_share=True)
    except FairShareDeferred:
        requeue_deferred(job_id)
        return DEFERRED
    if not claimed:
        logger.info("delivery could not claim the job; nothing to do", extra={"job_id": job_id})
        return "not_claimed"
    job = claimed[0]
    try:
        return _train_and_store(job, owner, settings)
    except SoftTimeLimitExceeded:
        # The checkpoint of the last finished epoch is stored; the attempt ends here.
        end_attempt(
            job.id, owner, JobStatus.FAILED, FailureReason.TIMEOUT, timeout_message(settings)
        )
        return JobStatus.FAILED


def _train_and_store(job: ClaimedJob, owner: str, settings: Settings) -> str:
    """Train a claimed job under its lease and store the outcome."""
    from celery.exceptions import SoftTimeLimitExceeded

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
            load_checkpoint=lambda: read_checkpoint(job),
            checkpoint_ready=writer.checkpoint_ready,
        )
        try:
            arrays = load_upload(job.dataset_id) if job.dataset_id else None
            output = run_experiment(
                job.spec,
                arrays=arrays,
                hooks=hooks,
                **upload_facts(job.dataset_id),
            )
            writer.finish()  # the progress rows, before the result
        except TrainingStopped as stop:
            # a lost lease writes nothing more; cancel, shutdown and timeout keep the latest
            lost = stop.reason == StopReason.LEASE_LOST
            writer.close(checkpoint=not lost, progress=not lost)
            return _stopped(job, owner, stop.reason)
        except SoftTimeLimitExceeded:
            close_quietly(writer)  # execute_job ends the job as timed out
            raise
        except Exception as exc:
            close_quietly(writer)
            fail(job, owner, exc)
            return JobStatus.FAILED
        if lease.stop_reason:  # a shutdown, or what the last heartbeat saw
            return _stopped(job, owner, lease.stop_reason)
    # A cancel or a lost lease since that heartbeat is the store's own owner check.
    return store_result(job, owner, output.result, output.artifacts)


def _stopped(job: ClaimedJob, owner: str, reason: str) -> str:
    """End an attempt that was stopped from outside: cancel, shutdown, timeout, lost lease."""
    if reason == StopReason.CANCELED:
        end_attempt(job.id, owner, JobStatus.CANCELED)
        return JobStatus.CANCELED
    if reason == StopReason.SHUTDOWN:
        release_group([job], owner)
        return "released"
    if reason == StopReason.TIMEOUT:  # the hard time limit: SIGTERM now, SIGKILL in a moment
        end_attempt(job.id, owner, JobStatus.FAILED, FailureReason.TIMEOUT, hard_timeout_message())
        return JobStatus.FAILED
    return StopReason.LEASE_LOST  # another attempt owns the job: write nothing
