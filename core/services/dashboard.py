"""Reads the dashboard needs that the JSON API's services do not offer (no result documents)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from core.models import Job


def sweep_trials(session: Session, *, tenant_id: str, sweep_id: str) -> list[Job]:
    """The tenant's trials of a sweep without their (large) result documents loaded."""
    query = (
        select(Job)
        .options(defer(Job.result))
        .where(Job.tenant_id == tenant_id, Job.sweep_id == sweep_id)
        .limit(1000)
    )
    return list(session.scalars(query))
