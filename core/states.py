"""The vocabularies of a job's life: states, failure reasons, stop reasons (torch-free)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """The status of a job (and, with `canceling`, of a sweep)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class SweepStatus(StrEnum):
    """The status of a sweep: a job's, plus `canceling` while running trials stop."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELING = "canceling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class FailureReason(StrEnum):
    """Why a job ended failed (or canceled); stored in job.failure_reason."""

    INVALID_DATASET = "invalid_dataset"
    DIVERGED = "diverged"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    CANCELED = "canceled"
    INTERNAL = "internal"
    DEVICE_UNAVAILABLE = "device_unavailable"


class StopReason(StrEnum):
    """Why training was stopped from outside (TrainingStopped.reason, LeaseKeeper.stop_reason)."""

    CANCELED = "canceled"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"
    LEASE_LOST = "lease_lost"


class LeaseState(StrEnum):
    """The answer to a lease renewal: go on, stop for a cancel, or stop (lease lost)."""

    OK = "ok"
    CANCEL = "cancel"
    LOST = "lost"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
