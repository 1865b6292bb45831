"""Webhooks on terminal job states: URL checks, HMAC-SHA256 signatures, logged retried delivery.

Signature: `X-Softlabel-Signature: sha256=<hex>` where hex is
HMAC-SHA256(tenant webhook secret, f"{timestamp}.{raw body}") and `timestamp` is the
`X-Softlabel-Timestamp` header (Unix seconds). Receivers should reject timestamps more
than a few minutes old. `X-Softlabel-Delivery` identifies the delivery (the same across
retries of one event) so receivers can drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import ValidationAppError
from core.models import Job, Tenant, WebhookDelivery
from core.states import TERMINAL_STATUSES
from core.timeutil import iso
from core.webhook_net import (
    PinnedTarget,
    Resolver,
    WebhookUrlError,
    post_pinned,
    resolve_checked,
    system_resolver,
)

__all__ = ["WebhookUrlError", "check_url", "deliver", "sign", "verify"]

logger = logging.getLogger("softlabel.webhooks")
SIGNATURE_HEADER = "X-Softlabel-Signature"
TIMESTAMP_HEADER = "X-Softlabel-Timestamp"
DELIVERY_HEADER = "X-Softlabel-Delivery"
EVENT_HEADER = "X-Softlabel-Event"
HEADLINE_METRICS = ("accuracy", "nll", "brier", "ece", "ece_adaptive", "mce", "mean_confidence")


def check_url(
    url: str, *, allow_private: bool, resolver: Resolver = system_resolver
) -> PinnedTarget:
    """Raise WebhookUrlError unless the URL parses and its host has only global addresses."""
    return resolve_checked(url, allow_private=allow_private, resolver=resolver)


def validate_spec_url(url: str | None, *, settings: Settings) -> None:
    """Check a spec's webhook_url at submission; a refused URL is a 422 on webhook_url."""
    if url is None:
        return
    try:
        check_url(url, allow_private=settings.webhook_allow_private)
    except WebhookUrlError as exc:
        raise ValidationAppError(
            str(exc),
            extra={
                "errors": [
                    {
                        "loc": ["body", "webhook_url"],
                        "field": "webhook_url",
                        "msg": str(exc),
                        "type": "value_error",
                    }
                ]
            },
        ) from exc


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for a body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """True when `signature` is ours for this body and timestamp (constant-time compare)."""
    try:
        expected = sign(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, signature)


def payload(job: Job) -> dict[str, Any]:
    """The webhook body: the job summary and its headline metrics."""
    result = job.result or {}
    test = result.get("test") or {}
    scaled = result.get("temperature_scaled") or {}
    metrics = {k: test[k] for k in HEADLINE_METRICS if k in test}
    if scaled.get("temperature") is not None:
        metrics["temperature"] = scaled["temperature"]
        metrics["ece_temperature_scaled"] = (scaled.get("test") or {}).get("ece")
    return {
        "event": f"job.{job.status}",
        "job": {
            "id": job.id,
            "status": job.status,
            "attempt": job.attempt,
            "sweep_id": job.sweep_id,
            "tags": job.tags or {},
            "failure": (
                {"reason": job.failure_reason, "message": job.failure_message}
                if job.failure_reason
                else None
            ),
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "links": {"self": f"/v1/jobs/{job.id}", "result": f"/v1/jobs/{job.id}/result"},
        },
        "metrics": metrics,
    }


def list_deliveries(session: Session, *, job_id: str) -> list[WebhookDelivery]:
    """Every logged delivery attempt of a job, oldest first."""
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.id)
        )
    )


def backoff_seconds(attempt: int, *, settings: Settings) -> float:
    """Delay before attempt `attempt + 1`: exponential from webhook_backoff_seconds, capped."""
    return float(min(settings.webhook_backoff_seconds * 2 ** (attempt - 1), 3600.0))


def schedule_terminal(job_ids: list[str]) -> int:
    """After terminal transitions have committed: enqueue the webhook of each job that has one.

    One read of the jobs' status and spec (not the rows with their results); the number of
    webhooks enqueued is returned.
    """
    from core.db import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(Job.id, Job.status, Job.spec).where(Job.id.in_(job_ids))).all()
    by_id = {row.id: row for row in rows}
    sent = 0
    for job_id in job_ids:  # in the order the jobs ended
        job = by_id.get(job_id)
        if job is None or job.status not in TERMINAL_STATUSES:
            continue
        if not (job.spec or {}).get("webhook_url"):
            continue
        try:
            enqueue_webhook(job_id, f"job.{job.status}", 1)
            sent += 1
        except Exception as exc:  # noqa: BLE001 - the job is done; a lost webhook is logged
            logger.warning("could not enqueue webhook: %s", exc, extra={"job_id": job_id})
    return sent


def enqueue_webhook(job_id: str, event: str, attempt: int, *, countdown: float = 0.0) -> None:
    """Send the delivery task (ids only) to the control queue."""
    from core.queue import QUEUE_CONTROL, TASK_DELIVER_WEBHOOK, get_celery

    get_celery().send_task(
        TASK_DELIVER_WEBHOOK,
        args=[job_id, event, attempt],
        queue=QUEUE_CONTROL,
        countdown=countdown or None,
    )


def deliver(
    session: Session,
    *,
    job_id: str,
    event: str,
    attempt: int,
    settings: Settings,
    resolver: Resolver = system_resolver,
) -> bool | None:
    """POST one signed attempt and log it; True delivered, False retry, None give up.

    The host is resolved once here and the POST connects to that checked address.
    """
    job = session.get(Job, job_id)
    if job is None:
        return None
    url = (job.spec or {}).get("webhook_url")
    tenant = session.get(Tenant, job.tenant_id)
    if not url or tenant is None:
        return None
    row = WebhookDelivery(job_id=job_id, url=url, event=event, attempt=attempt)
    session.add(row)
    try:
        target = check_url(url, allow_private=settings.webhook_allow_private, resolver=resolver)
    except WebhookUrlError as exc:  # DNS may have changed since submission
        row.error = str(exc)
        session.flush()
        return None
    body = json.dumps(payload(job), separators=(",", ":"), default=str).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "softlabel-webhooks/1",
        SIGNATURE_HEADER: sign(tenant.webhook_secret, timestamp, body),
        TIMESTAMP_HEADER: str(timestamp),
        DELIVERY_HEADER: f"{job_id}:{event}",
        EVENT_HEADER: event,
    }
    outcome = post_pinned(
        target, body=body, headers=headers, deadline_s=settings.webhook_timeout_seconds
    )
    row.status_code = outcome.status_code
    ok = outcome.status_code is not None and 200 <= outcome.status_code < 300
    if outcome.status_code is None:
        row.error = outcome.excerpt
    elif not ok:
        row.error = f"HTTP {outcome.status_code}: {outcome.excerpt}"
    session.flush()
    if ok:
        return True
    return False if attempt < settings.webhook_max_attempts else None
