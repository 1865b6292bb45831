"""Run a group of stackable sweep trials in one process: claim all, train stacked, store each."""

from __future__ import annotations

import logging
import threading
from typing import Any

from core.config import Settings
from core.db import session_scope
from core.queue import enqueue_group
from core.services import jobs as job_service
from core.services import sweeps as sweep_service
from core.timeutil import as_utc
from worker.lease import SHUTDOWN, LeaseKeeper
from worker.runner import (
    ClaimedJob,
    end_attempt,
    load_upload,
    record_progress_row,
    store_result,
    timeout_message,
    upload_class_names,
    with_db_retry,
    worker_identity,
)

logger = logging.getLogger("softlabel.worker")


class GroupLeaseKeeper(LeaseKeeper):
    """One heartbeat thread renewing the leases of every trial of a group."""

    def __init__(self, *, job_ids: list[str], owner: str, settings: Settings) -> None:
        super().__init__(job_id=job_ids[0], owner=owner, settings=settings)
        self.job_ids = list(job_ids)
        self.states: dict[str, str] = {job_id: "ok" for job_id in job_ids}
        self._lock = threading.Lock()

    def __enter__(self) -> GroupLeaseKeeper:
        super().__enter__()
        return self

    def renew_once(self) -> None:
        """Renew every still-live lease; a trial that is canceled or lost is masked out."""
        with self._lock:
            live = [j for j in self.job_ids if self.states[j] == "ok"]
        if not live:
            return
        try:
            with session_scope() as session:
                answers = {
                    job_id: job_service.renew_lease(
                        session,
                        job_id=job_id,
                        owner=self.owner,
                        lease_seconds=self.settings.lease_seconds,
                    )
                    for job_id in live
                }
        except Exception as exc:  # noqa: BLE001 - DB blips: retry at the next beat
            logger.warning("group lease renewal failed: %s", exc, extra={"job_id": self.job_id})
            return
        with self._lock:
            self.states.update({j: s for j, s in answers.items() if s != "ok"})
            if all(s in ("lost", "done") for s in self.states.values()):
                self.request_stop("lease_lost")

    def retire(self, job_id: str) -> None:
        """Stop renewing a trial that has ended (e.g. diverged)."""
        with self._lock:
            self.states[job_id] = "done"

    def masked(self, job_id: str) -> bool:
        """True once the trial was canceled or its lease went to another attempt."""
        with self._lock:
            return self.states[job_id] != "ok"

    def group_stop_reason(self) -> str | None:
        """Why the whole group must stop: shutdown, or every lease lost or canceled."""
        if self.stop_reason:
            return self.stop_reason
        with self._lock:
            if all(s != "ok" for s in self.states.values()):
                return "canceled"
        return None


def claim_group(job_ids: list[str], *, owner: str, settings: Settings) -> list[ClaimedJob]:
    """Claim every claimable trial of the group in one conditional update."""
    with session_scope() as session:
        ids = sweep_service.claim_group(
            session, job_ids=job_ids, owner=owner, lease_seconds=settings.lease_seconds
        )
        claimed = []
        for job_id in ids:
            job = job_service.get_job_by_id(session, job_id=job_id)
            assert job is not None
            queued_at, started = as_utc(job.queued_at), as_utc(job.started_at)
            queued_s = (started - queued_at).total_seconds() if queued_at and started else 0.0
            claimed.append(
                ClaimedJob(
                    job.id, job.tenant_id, job.spec, job.attempt, job.dataset_id, max(queued_s, 0.0)
                )
            )
        return claimed


def finalize_sweep_of(job_id: str) -> None:
    """Write the sweep's report if this job was its last open trial (errors are logged)."""

    def run() -> bool:
        with session_scope() as session:
            return sweep_service.finalize_for_job(session, job_id=job_id)

    try:
        with_db_retry(run, what="finalize sweep", deadline_s=30.0)
    except Exception:  # noqa: BLE001 - the report is rebuilt on a later trigger
        logger.exception("sweep finalization failed", extra={"job_id": job_id})


def finalize_sweep(sweep_id: str) -> bool:
    """Write a sweep's report and plots if every trial has ended (the finalize task)."""

    def run() -> bool:
        with session_scope() as session:
            return sweep_service.finalize_sweep_if_done(session, sweep_id=sweep_id)

    return with_db_retry(run, what="finalize sweep", deadline_s=30.0)


def _end_all(jobs: list[ClaimedJob], owner: str, reason: str, message: str) -> None:
    for job in jobs:
        end_attempt(job.id, owner, "failed", reason, message)


def _release_group(jobs: list[ClaimedJob], owner: str) -> None:
    """Give the group back to the queue (soft shutdown) and re-enqueue it as one task."""
    released = [job.id for job in jobs if end_attempt(job.id, owner, "queued")]
    if not released:
        return
    try:
        enqueue_group(released)

        def mark() -> None:
            with session_scope() as session:
                job_service.mark_enqueued(session, job_ids=released)

        with_db_retry(mark, what="mark enqueued", deadline_s=5.0)
    except Exception as exc:  # noqa: BLE001 - the reconciler re-enqueues them after the grace
        logger.warning("re-enqueue of a released group failed: %s", exc)


def execute_group(
    job_ids: list[str], *, settings: Settings, owner: str | None = None
) -> dict[str, str]:
    """Train a group of stackable trials together; returns the outcome per claimed job id."""
    from celery.exceptions import SoftTimeLimitExceeded

    owner = owner or worker_identity()
    jobs = claim_group(job_ids, owner=owner, settings=settings)
    if not jobs:
        logger.info("delivery could not claim any trial of the group; nothing to do")
        return {}
    try:
        return _train_group(jobs, owner, settings)
    except SoftTimeLimitExceeded:
        _end_all(jobs, owner, "timeout", timeout_message(settings))
        return {job.id: "failed" for job in jobs}
    finally:
        finalize_sweep_of(jobs[0].id)


def _train_group(jobs: list[ClaimedJob], owner: str, settings: Settings) -> dict[str, str]:
    """Run the claimed trials as one stacked model under one lease keeper; store each."""
    from celery.exceptions import SoftTimeLimitExceeded

    from core.ml.errors import (
        DeviceUnavailableError,
        InvalidDatasetError,
        SpecError,
        TrainingDivergedError,
        TrainingStopped,
        TrialDivergedError,
    )
    from core.ml.sweep import TrialHooks, run_trials

    outcomes: dict[str, str] = {}
    outputs: dict[str, Any] = {}
    with GroupLeaseKeeper(job_ids=[j.id for j in jobs], owner=owner, settings=settings) as lease:
        pending = list(jobs)
        while pending:  # again without a trial that diverged (it alone ends failed)
            group = list(pending)

            def on_epoch(i: int, row: dict[str, Any], group: list[ClaimedJob] = group) -> None:
                job = group[i]
                record_progress_row(job, owner, int(job.spec["training"]["epochs"]), row)

            def trial_canceled(i: int, group: list[ClaimedJob] = group) -> bool:
                return lease.masked(group[i].id)

            hooks = TrialHooks(
                on_epoch=on_epoch,
                should_stop=lease.group_stop_reason,
                trial_canceled=trial_canceled,
            )
            try:
                arrays = load_upload(group[0].dataset_id) if group[0].dataset_id else None
                results = run_trials(
                    [j.spec for j in group],
                    arrays=arrays,
                    hooks=hooks,
                    class_names=upload_class_names(group[0].dataset_id),
                )
            except TrialDivergedError as exc:
                bad = group[exc.trial]
                end_attempt(bad.id, owner, "failed", "diverged", str(exc))
                outcomes[bad.id] = "failed"
                lease.retire(bad.id)
                pending.remove(bad)
                continue
            except TrainingStopped as stop:
                if stop.reason == SHUTDOWN:
                    _release_group(group, owner)
                    return {**outcomes, **{job.id: "released" for job in group}}
                results = [None] * len(group)
            except TrainingDivergedError as exc:
                _end_all(group, owner, "diverged", str(exc))
                return {**outcomes, **{job.id: "failed" for job in group}}
            except (InvalidDatasetError, SpecError) as exc:
                _end_all(group, owner, "invalid_dataset", str(exc))
                return {**outcomes, **{job.id: "failed" for job in group}}
            except DeviceUnavailableError as exc:
                _end_all(group, owner, "device_unavailable", str(exc))
                return {**outcomes, **{job.id: "failed" for job in group}}
            except SoftTimeLimitExceeded:
                raise
            except Exception as exc:
                logger.exception("trial group failed", extra={"job_id": group[0].id})
                _end_all(group, owner, "internal", f"{type(exc).__name__}: {exc}")
                return {**outcomes, **{job.id: "failed" for job in group}}
            outputs.update({job.id: out for job, out in zip(group, results, strict=True)})
            break
        lease.renew_once()  # a cancel or a lost lease that came during the last epoch
        if lease.stop_reason == SHUTDOWN:
            _release_group(pending, owner)
            return {**outcomes, **{job.id: "released" for job in pending}}
    for job in pending:
        state, output = lease.states[job.id], outputs.get(job.id)
        if state == "lost":
            outcomes[job.id] = "lease_lost"  # another attempt owns it: write nothing
        elif state == "cancel":
            end_attempt(job.id, owner, "canceled")
            outcomes[job.id] = "canceled"
        elif output is None:
            end_attempt(
                job.id, owner, "failed", "internal", "the stacked trainer returned no output"
            )
            outcomes[job.id] = "failed"
        else:
            stored = store_result(job, owner, output.result, output.artifacts)
            outcomes[job.id] = "succeeded" if stored else "lease_lost"
    return outcomes
