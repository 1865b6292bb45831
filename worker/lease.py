"""Lease keepers: threads that renew the leases of a running job or group, and watch for cancel."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from core.config import Settings
from core.db import session_scope
from core.services import jobs as job_service
from core.states import LeaseState, StopReason
from core.timeutil import utcnow

logger = logging.getLogger("softlabel.worker")
DONE = "done"  # GroupLeaseKeeper: a trial that has ended is no longer renewed
_ACTIVE: set[LeaseKeeper] = set()
_ACTIVE_LOCK = threading.Lock()


class LeaseKeeper:
    """Renews the lease every heartbeat period; `stop_reason` tells the trainer to stop."""

    def __init__(self, *, job_id: str, owner: str, settings: Settings) -> None:
        self.job_id = job_id
        self.owner = owner
        self.settings = settings
        self.stop_reason: str | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)
        self._halt.set()
        self._thread.join(timeout=10)

    def request_stop(self, reason: str) -> None:
        """Ask the trainer to stop at the next batch (e.g. worker shutdown)."""
        self.stop_reason = self.stop_reason or reason

    def renew_once(self) -> None:
        """Renew the lease now and update `stop_reason` from the answer."""
        try:
            with session_scope() as session:
                state = job_service.renew_lease(
                    session,
                    job_id=self.job_id,
                    owner=self.owner,
                    lease_seconds=self.settings.lease_seconds,
                )
        except Exception as exc:  # noqa: BLE001 - DB blips: retry at the next beat
            logger.warning("lease renewal failed: %s", exc, extra={"job_id": self.job_id})
            return
        if state == LeaseState.CANCEL:
            self.request_stop(StopReason.CANCELED)
        elif state == LeaseState.LOST:
            self.request_stop(StopReason.LEASE_LOST)

    def _run(self) -> None:
        while not self._halt.wait(self.settings.heartbeat_seconds):
            self.renew_once()


def request_shutdown(reason: str = StopReason.SHUTDOWN) -> int:
    """Ask every running job of this process to stop for `reason`; returns how many."""
    with _ACTIVE_LOCK:
        keepers = [
            k for k in _ACTIVE if k.stop_reason not in (StopReason.SHUTDOWN, StopReason.TIMEOUT)
        ]
    for keeper in keepers:
        keeper.request_stop(reason)
    return len(keepers)


_PREVIOUS: list[Any] = []
_TASK: dict[str, float] = {"started": 0.0, "hard_limit": 0.0}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """First SIGTERM: soft shutdown of the running job; idle or second time: the old handler.

    Billiard also sends SIGTERM (then SIGKILL) when the hard time limit is reached: a SIGTERM
    that late in the task stops the job as timed out instead of returning it to the queue.
    """
    hard = _TASK["hard_limit"]
    late = hard > 0 and time.monotonic() - _TASK["started"] >= hard - 1.0
    reason = StopReason.TIMEOUT if late else StopReason.SHUTDOWN
    if request_shutdown(reason):
        logger.warning("SIGTERM: stopping the running job (%s)", reason)
        return
    previous = _PREVIOUS[0] if _PREVIOUS else signal.SIG_DFL
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_soft_shutdown(hard_limit_s: float = 0.0) -> None:
    """Make SIGTERM a soft shutdown in this (pool child) process; main thread only.

    Called when each task starts (billiard replaces SIGTERM handlers after
    worker_process_init); remembers the task's start for the hard-limit check.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    _TASK.update(started=time.monotonic(), hard_limit=float(hard_limit_s))
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return
    _PREVIOUS[:] = [current]
    signal.signal(signal.SIGTERM, _on_sigterm)


class GroupLeaseKeeper(LeaseKeeper):
    """One heartbeat thread renewing the leases of every trial of a group."""

    def __init__(self, *, job_ids: list[str], owner: str, settings: Settings) -> None:
        super().__init__(job_id=job_ids[0], owner=owner, settings=settings)
        self.job_ids = list(job_ids)
        self.states: dict[str, str] = {job_id: LeaseState.OK for job_id in job_ids}
        self._lock = threading.Lock()

    def __enter__(self) -> GroupLeaseKeeper:
        super().__enter__()
        return self

    def renew_once(self) -> None:
        """Renew every still-live lease; a trial that is canceled or lost is masked out."""
        with self._lock:
            live = [j for j in self.job_ids if self.states[j] == LeaseState.OK]
        if not live:
            return
        try:
            with session_scope() as session:
                now = utcnow()  # one expiry for the whole group
                answers = {
                    job_id: job_service.renew_lease(
                        session,
                        job_id=job_id,
                        owner=self.owner,
                        lease_seconds=self.settings.lease_seconds,
                        now=now,
                    )
                    for job_id in live
                }
        except Exception as exc:  # noqa: BLE001 - DB blips: retry at the next beat
            logger.warning("group lease renewal failed: %s", exc, extra={"job_id": self.job_id})
            return
        with self._lock:
            self.states.update({j: s for j, s in answers.items() if s != LeaseState.OK})
            if all(s in (LeaseState.LOST, DONE) for s in self.states.values()):
                self.request_stop(StopReason.LEASE_LOST)

    def retire(self, job_id: str) -> None:
        """Stop renewing a trial that has ended (e.g. diverged)."""
        with self._lock:
            self.states[job_id] = DONE

    def masked(self, job_id: str) -> bool:
        """True once the trial was canceled or its lease went to another attempt."""
        with self._lock:
            return self.states[job_id] != LeaseState.OK

    def group_stop_reason(self) -> str | None:
        """Why the whole group must stop: shutdown, or every lease lost or canceled."""
        if self.stop_reason:
            return self.stop_reason
        with self._lock:
            if all(s != LeaseState.OK for s in self.states.values()):
                return StopReason.CANCELED
        return None
