"""Run a group of stackable sweep trials in one process: claim all, train stacked, store each."""

from __future__ import annotations

import logging
from typing import Any

from core.config import Settings
from core.ml.errors import TrainingStopped, TrialDivergedError
from core.services.fairness import FAIR_SHARE_RETRY_S, FairShareDeferred
from core.services.jobs import ClaimedJob
from core.states import FailureReason, JobStatus, LeaseState, StopReason
from worker import attempt
from worker.group_checkpoints import (
    GroupCheckpointWriter,
    discard_group_checkpoint,
    read_group_checkpoint,
)
from worker.lease import GroupLeaseKeeper

logger = logging.getLogger("softlabel.worker")
Outcomes = dict[str, str]


def execute_group(job_ids: list[str], *, settings: Settings, owner: str | None = None) -> Outcomes:
    """Train a group of stackable trials together; returns the outcome per claimed job id."""
    from celery.exceptions import SoftTimeLimitExceeded

    import core.ml.sweep  # noqa: F401 - load torch before the lease clock starts
    from core.ml.train import preload_training

    preload_training()  # and what the first optimiser imports
    owner = owner or attempt.worker_identity()
    try:
        jobs = attempt.claim(job_ids, owner=owner, settings=settings, fair_share=True)
    except FairShareDeferred:
        requeue_deferred_group(job_ids)
        return {}
    if not jobs:
        logger.info("delivery could not claim any trial of the group; nothing to do")
        return {}
    try:
        return _train_group(jobs, owner, settings)
    except SoftTimeLimitExceeded:
        _end_all(jobs, owner, FailureReason.TIMEOUT, attempt.timeout_message(settings))
        return {job.id: JobStatus.FAILED for job in jobs}


def requeue_deferred_group(job_ids: list[str]) -> None:
    """Put a deferred group's task back on the training queue, after a short delay."""
    from core.queue import QUEUE_TRAINING, TASK_RUN_GROUP, get_celery

    get_celery().send_task(
        TASK_RUN_GROUP, args=[job_ids], queue=QUEUE_TRAINING, countdown=FAIR_SHARE_RETRY_S
    )
    logger.info("tenant at its fair share: trial group deferred", extra={"job_id": job_ids[0]})


def _end_all(jobs: list[ClaimedJob], owner: str, reason: FailureReason, message: str) -> Outcomes:
    for job in jobs:
        attempt.end_attempt(job.id, owner, JobStatus.FAILED, reason, message)
    return {job.id: JobStatus.FAILED for job in jobs}


def _train_group(jobs: list[ClaimedJob], owner: str, settings: Settings) -> Outcomes:
    """Run the claimed trials as one stacked model under one lease keeper; store each."""
    outcomes: Outcomes = {}
    with GroupLeaseKeeper(job_ids=[j.id for j in jobs], owner=owner, settings=settings) as lease:
        pending = list(jobs)
        while True:  # again without a trial that diverged (it alone ends failed)
            try:
                outputs = _train_stacked(pending, owner, lease)
                break
            except TrialDivergedError as exc:
                bad = pending.pop(exc.trial)
                diverged = FailureReason.DIVERGED
                attempt.end_attempt(bad.id, owner, JobStatus.FAILED, diverged, str(exc))
                outcomes[bad.id] = JobStatus.FAILED
                lease.retire(bad.id)
            except TrainingStopped as stop:
                if stop.reason == StopReason.SHUTDOWN:
                    attempt.release_group(pending, owner)
                    return {**outcomes, **{job.id: "released" for job in pending}}
                outputs = {}
                break
            except Exception as exc:
                if not _is_ours(exc):
                    raise
                reason, message = attempt.failure_of(exc)
                if reason == FailureReason.INTERNAL:
                    logger.error("trial group failed", exc_info=exc, extra={"job_id": jobs[0].id})
                return {**outcomes, **_end_all(pending, owner, reason, message)}
            if not pending:
                return outcomes
        # a cancel or a lost lease since the last heartbeat: the store's own owner checks
        if lease.stop_reason == StopReason.SHUTDOWN:
            attempt.release_group(pending, owner)
            return {**outcomes, **{job.id: "released" for job in pending}}
    outcomes.update(_store_trials(pending, owner, lease.states, outputs))
    discard_group_checkpoint(jobs)
    return outcomes


def _is_ours(exc: BaseException) -> bool:
    """False for the soft time limit, which execute_group ends the whole group for."""
    from celery.exceptions import SoftTimeLimitExceeded

    return not isinstance(exc, SoftTimeLimitExceeded)


def _train_stacked(group: list[ClaimedJob], owner: str, lease: GroupLeaseKeeper) -> dict[str, Any]:
    """Train the trials of `group` stacked; their outputs by job id."""
    from core.ml.sweep import TrialHooks, run_trials

    first = group[0]
    with GroupCheckpointWriter(group, owner, lease) as writer:
        hooks = TrialHooks(
            on_epoch=lambda i, row: writer.record_trial_progress(group[i], row),
            should_stop=lambda: writer.stop_reason or lease.group_stop_reason(),
            trial_canceled=lambda i: lease.masked(group[i].id),
            checkpoint=writer.checkpoint_ready,
            resume=read_group_checkpoint(group),
            trial_keys=[j.id for j in group],
        )
        results = run_trials(
            [j.spec for j in group],
            arrays=attempt.load_upload(first.dataset_id) if first.dataset_id else None,
            hooks=hooks,
            **attempt.upload_facts(first.dataset_id),
        )
        writer.close(checkpoint=False)  # trained: the results make the checkpoint useless
    return {job.id: out for job, out in zip(group, results, strict=True)}


def _store_trials(group: list[ClaimedJob], owner: str, states: dict[str, str],
                  outputs: dict[str, Any]) -> Outcomes:
    """End the trials after the stacked run: the results in one transaction, cancels, and
    nothing for a trial whose lease was lost."""
    outcomes: Outcomes = {}
    finished: list[attempt.Finished] = []
    for job in group:
        output = outputs.get(job.id)
        if states[job.id] == LeaseState.LOST:
            outcomes[job.id] = StopReason.LEASE_LOST  # another attempt owns it: write nothing
        elif states[job.id] == LeaseState.CANCEL:
            attempt.end_attempt(job.id, owner, JobStatus.CANCELED)
            outcomes[job.id] = JobStatus.CANCELED
        elif output is None:
            message = "the stacked trainer returned no output"
            attempt.end_attempt(job.id, owner, JobStatus.FAILED, FailureReason.INTERNAL, message)
            outcomes[job.id] = JobStatus.FAILED
        else:
            finished.append((job, output.result, output.artifacts))
    if finished:
        ended = attempt.store_results(finished, owner)
        outcomes.update((job.id, end) for (job, _, _), end in zip(finished, ended, strict=True))
    return outcomes
