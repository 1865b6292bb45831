"""Effects after commit: enqueue jobs and groups, announce terminal jobs, finalize sweeps.

Whoever changes state collects the effects on the session (`effects(session).enqueue_job(id)`,
`.announce_terminal(id)`, ...); they run once that session's transaction has committed and
are dropped if it rolls back. A broker that is down is logged and tolerated: the jobs are
stored, and the reconciler enqueues them again after the grace period.

Adding an effect of a terminal job (webhooks, sweep reports, an export) is one line in
TERMINAL_EFFECTS: a function of the job ids and whether it runs inside a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

logger = logging.getLogger("softlabel.effects")
_KEY = "softlabel_effects"
# (job ids, in a worker?) -> None; errors are logged, never raised to the caller.
TerminalEffect = Callable[[list[str], bool], None]


def _schedule_webhooks(job_ids: list[str], in_worker: bool) -> None:
    from core.services.webhooks import schedule_terminal

    schedule_terminal(job_ids)


def _finalize_sweeps(job_ids: list[str], in_worker: bool) -> None:
    from core.db import session_scope
    from core.services.sweeps import sweep_ids_of

    with session_scope() as session:
        sweep_ids = sweep_ids_of(session, job_ids=job_ids)
    for sweep_id in sweep_ids:
        _finalize_sweep(sweep_id, in_worker)


def _finalize_sweep(sweep_id: str, in_worker: bool) -> None:
    """In a worker the report is written here and now; elsewhere a worker is asked for it."""
    if in_worker:
        finalize_sweep(sweep_id)
    else:
        from core.queue import enqueue_finalize_sweep

        enqueue_finalize_sweep(sweep_id)


def _schedule_exports(job_ids: list[str], in_worker: bool) -> None:
    from core.exports.schedule import enqueue_export, schedule_exports

    for job_id in job_ids:  # after _finalize_sweeps: a finished sweep exports its trials
        if in_worker:
            schedule_exports(job_id)
        else:  # the export settings are the workers': one of them decides (attempt 0)
            enqueue_export("job", job_id, 0)


TERMINAL_EFFECTS: list[TerminalEffect] = [_schedule_webhooks, _finalize_sweeps, _schedule_exports]


def finalize_sweep(sweep_id: str) -> bool:
    """Write a sweep's report and plots if every trial has ended (its own transaction)."""
    from core.db import session_scope, with_db_retry
    from core.services.sweeps import finalize_sweep_if_done

    def run() -> bool:
        with session_scope() as session:
            return finalize_sweep_if_done(session, sweep_id=sweep_id)

    return with_db_retry(run, what="finalize sweep", deadline_s=30.0)


@dataclass
class Effects:
    """The effects a transaction has collected, run by `fire` after it commits."""

    in_worker: bool = False
    jobs: list[str] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)
    terminal: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)

    def enqueue_job(self, job_id: str) -> None:
        """Send the job's training task after commit."""
        self.jobs.append(job_id)

    def enqueue_group(self, job_ids: list[str]) -> None:
        """Send one task training these stackable trials together (one id: a plain job)."""
        if len(job_ids) == 1:
            self.jobs.append(job_ids[0])
        elif job_ids:
            self.groups.append(list(job_ids))

    def announce_terminal(self, job_id: str) -> None:
        """Run every TERMINAL_EFFECTS for a job that has reached a terminal state."""
        self.terminal.append(job_id)

    def finalize_sweep(self, sweep_id: str) -> None:
        """Write (in a worker) or request (elsewhere) a sweep's report."""
        self.sweeps.append(sweep_id)

    def fire(self) -> None:
        """Run the collected effects once; each failure is logged and tolerated."""
        self._send()
        if self.terminal:
            for effect in TERMINAL_EFFECTS:
                terminal = list(dict.fromkeys(self.terminal))
                _tolerant(effect.__name__, effect, terminal, self.in_worker)
        for sweep_id in dict.fromkeys(self.sweeps):
            _tolerant("finalize sweep", _finalize_sweep, sweep_id, self.in_worker)
        self.jobs, self.groups, self.terminal, self.sweeps = [], [], [], []

    def _send(self) -> None:
        from core.queue import enqueue_group, enqueue_job

        sent: list[str] = []
        for job_id in dict.fromkeys(self.jobs):
            if _tolerant("enqueue", enqueue_job, job_id):
                sent.append(job_id)
        for group in self.groups:
            if _tolerant("enqueue group", enqueue_group, group):
                sent.extend(group)
        if sent:
            _tolerant("mark enqueued", _mark_enqueued, sent)


def _tolerant(what: str, fn: Callable[..., Any], *args: Any) -> bool:
    try:
        fn(*args)
        return True
    except Exception as exc:  # noqa: BLE001 - stored state is safe; the reconciler catches up
        logger.warning("%s failed after commit (the reconciler catches up): %s", what, exc)
        return False


def _mark_enqueued(job_ids: list[str]) -> None:
    from core.db import session_scope, with_db_retry
    from core.services.jobs import mark_enqueued

    def mark() -> None:
        with session_scope() as session:
            mark_enqueued(session, job_ids=job_ids)

    with_db_retry(mark, what="mark enqueued", deadline_s=5.0)


def effects(session: Session, *, in_worker: bool = False) -> Effects:
    """The effects collected on `session`, run after its transaction commits."""
    found = session.info.get(_KEY)
    if found is None:
        found = session.info[_KEY] = Effects(in_worker=in_worker)
    found.in_worker = found.in_worker or in_worker
    return found


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    pending = session.info.pop(_KEY, None)
    if pending is not None:
        pending.fire()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_KEY, None)
