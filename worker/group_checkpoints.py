"""Group checkpoints of a stacked sweep group: stored paced and owner-checked, read on resume.

One checkpoint per group, keyed by the sweep and the trials' stack key (`group_checkpoint_key`),
so a group delivered again (the same trials, attempt + 1, after the reconciler requeued their
expired leases) finds it, and so does a part of it; trials are matched by job id inside
(core/ml/group_checkpoint.py). Stored through `CheckpointWriter`'s pacing; every store checks
under row locks that this worker still owns every live trial of the group.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from core.db import is_transient, session_scope, with_db_retry
from core.ml.errors import TrainingStopped
from core.services import jobs as job_service
from core.services.jobs import ClaimedJob
from core.states import StopReason
from core.storage import delete_artifact, get_artifact, put_artifact
from core.sweep_spec import stack_key
from worker.checkpoints import CheckpointWriter, progress_entries
from worker.lease import GroupLeaseKeeper

logger = logging.getLogger("softlabel.worker")
GROUP_CHECKPOINT_NAME = "group_checkpoint.safetensors"


def group_checkpoint_key(group: list[ClaimedJob]) -> str:
    """The storage key of the group's checkpoint (its sweep and stack key; else its first job)."""
    digest = hashlib.sha256(stack_key(group[0].spec).encode()).hexdigest()[:24]
    owner = f"sweeps/{group[0].sweep_id}" if group[0].sweep_id else f"jobs/{group[0].id}"
    return f"{owner}/groups/{digest}/{GROUP_CHECKPOINT_NAME}"


def read_group_checkpoint(group: list[ClaimedJob]) -> bytes | None:
    """The group's stored checkpoint, or None."""

    def read() -> bytes | None:
        with session_scope() as session:
            found = get_artifact(session, key=group_checkpoint_key(group))
            return None if found is None else found[1]

    return with_db_retry(read, what="load group checkpoint")


def discard_group_checkpoint(group: list[ClaimedJob]) -> None:
    """Delete the group's checkpoint once its trials have ended (errors are logged)."""

    def drop() -> None:
        with session_scope() as session:
            delete_artifact(session, key=group_checkpoint_key(group))

    try:
        with_db_retry(drop, what="delete group checkpoint", deadline_s=5.0)
    except Exception as exc:  # noqa: BLE001 - a leftover checkpoint is only space
        logger.warning("group checkpoint not deleted: %s", exc, extra={"job_id": group[0].id})


class GroupCheckpointWriter(CheckpointWriter):
    """`CheckpointWriter` for a group: the same pacing, one blob for all trials, and every
    trial's progress rows stored with it (one transaction, one progress event per row)."""

    def __init__(self, group: list[ClaimedJob], owner: str, lease: GroupLeaseKeeper) -> None:
        super().__init__(group[0], owner, int(group[0].spec["training"]["epochs"]))
        self.group, self.lease, self.key = group, lease, group_checkpoint_key(group)

    def _write_checkpoint(self, blob: bytes) -> None:
        """Store if this worker owns every live trial; none live: stop (lease lost)."""
        live = [j for j in self.group if not self.lease.masked(j.id)]
        if not live:
            raise TrainingStopped(StopReason.LEASE_LOST)

        def write() -> None:
            with session_scope() as session:
                for job in live:
                    if not job_service.is_owned(session, job_id=job.id, owner=self.owner,
                                                lock=True):
                        return  # another attempt has it: write nothing (masked next beat)
                put_artifact(session, key=self.key, data=blob, tenant_id=self.job.tenant_id,
                             job_id=self.job.id)

        with_db_retry(write, what="save group checkpoint")

    def record_trial_progress(self, job: ClaimedJob, row: dict[str, Any]) -> None:
        """Training thread: queue one epoch row of one trial."""
        self._queue_row((job, row), int(row.get("epoch") or 0))

    def _write_rows(self, rows: list[tuple[ClaimedJob, dict[str, Any]]]) -> None:
        """Every trial's queued rows in one transaction (owner-checked per trial)."""
        by_job: dict[str, tuple[ClaimedJob, list[dict[str, Any]]]] = {}
        for job, row in rows:
            by_job.setdefault(job.id, (job, []))[1].append(row)

        def write() -> None:
            with session_scope() as session:
                for job, job_rows in by_job.values():
                    job_service.record_progress(
                        session, job_id=job.id, owner=self.owner,
                        progress=progress_entries(job_rows, self.epochs))

        try:
            with_db_retry(write, what="record progress", deadline_s=5.0)
        except Exception as exc:
            if not is_transient(exc):
                raise
            logger.warning("progress not recorded: %s", exc, extra={"job_id": self.job.id})
