"""The Celery app shared by the API (to enqueue) and the workers (to run)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from core.config import Settings, get_settings

TASK_RUN_JOB = "softlabel.run_job"
TASK_RUN_GROUP = "softlabel.run_group"
TASK_FINALIZE_SWEEP = "softlabel.finalize_sweep"
TASK_RECONCILE = "softlabel.reconcile"
TASK_DELIVER_WEBHOOK = "softlabel.deliver_webhook"
QUEUE_TRAINING = "training"
QUEUE_CONTROL = "control"


def visibility_timeout(settings: Settings) -> int:
    """Seconds before Redis redelivers an unacked message: above the hard time limit."""
    return settings.task_time_limit + 600


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Transport options; visibility_timeout is above the hard time limit (docs/architecture.md)."""
    options: dict[str, Any] = {"visibility_timeout": visibility_timeout(settings)}
    if settings.resolved_broker_url.startswith("redis"):
        options["socket_connect_timeout"] = 5
    if settings.resolved_broker_url.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options.update(
            data_folder_in=str(folder / "out"),
            data_folder_out=str(folder / "out"),
            processed_folder=str(folder / "processed"),
            control_folder=str(folder / "control"),  # kombu's default is ./control
            store_processed=False,
            polling_interval=0.05,
        )
    return options


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app from settings (JSON only, late acks, prefetch 1)."""
    app = Celery("softlabel", broker=settings.resolved_broker_url)
    transport = broker_transport_options(settings)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # Celery arms the hard limit only once the soft one fired: a soft limit at or above
        # the hard one would postpone the hard kill, so it is dropped.
        task_soft_time_limit=(
            settings.task_soft_time_limit
            if settings.task_soft_time_limit < settings.task_time_limit
            else None
        ),
        task_time_limit=settings.task_time_limit,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=transport["visibility_timeout"],
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_default_queue=QUEUE_TRAINING,
        task_routes={
            TASK_RUN_JOB: {"queue": QUEUE_TRAINING},
            TASK_RUN_GROUP: {"queue": QUEUE_TRAINING},
            TASK_FINALIZE_SWEEP: {"queue": QUEUE_CONTROL},
            TASK_RECONCILE: {"queue": QUEUE_CONTROL},
            TASK_DELIVER_WEBHOOK: {"queue": QUEUE_CONTROL},
        },
        worker_hijack_root_logger=False,
        broker_heartbeat=10,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    """The process-wide Celery app."""
    return make_celery(get_settings())


# A publish to a broker that is down fails within about a second: the job is already
# committed in Postgres and the reconciler sends it later.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def enqueue_job(job_id: str) -> None:
    """Send the training task for a committed job (the id only, never the row)."""
    get_celery().send_task(
        TASK_RUN_JOB, args=[job_id], queue=QUEUE_TRAINING, retry=True, retry_policy=PUBLISH_RETRY
    )


def enqueue_group(job_ids: list[str]) -> None:
    """Send one task that trains a group of stackable trial jobs together (ids only)."""
    get_celery().send_task(
        TASK_RUN_GROUP,
        args=[list(job_ids)],
        queue=QUEUE_TRAINING,
        retry=True,
        retry_policy=PUBLISH_RETRY,
    )


def enqueue_finalize_sweep(sweep_id: str) -> None:
    """Ask a worker to write a sweep's report and plots (e.g. after a cancel)."""
    get_celery().send_task(
        TASK_FINALIZE_SWEEP,
        args=[sweep_id],
        queue=QUEUE_CONTROL,
        retry=True,
        retry_policy=PUBLISH_RETRY,
    )


def broker_reachable(timeout: float = 2.0) -> bool:
    """True when a broker connection can be opened."""
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False
