"""Fair shares of the workers between tenants, decided at claim time.

A tenant that already holds `cap` workers (a stacked sweep group counts as one) does not get
another worker while some other tenant has a job waiting: that delivery is deferred (put
back on the queue after a short delay) and the worker moves on to the next task, so one
tenant's 100 queued jobs cannot starve another's. When nobody else waits, the tenant may
use every idle worker (work-conserving). Claims of one tenant are serialised by a row lock
on the tenant (Postgres), so concurrent workers cannot overshoot the cap together.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from core.models import Job, Tenant

FAIR_SHARE_RETRY_S = 1.0  # a deferred delivery comes back after this long


class FairShareDeferred(Exception):  # noqa: N818 - not an error: a delivery put back
    """The job's tenant has its fair share of workers; the delivery is put back for later."""


def must_yield(session: Session, *, job_id: str, cap: int) -> bool:
    """True when the job's tenant runs `cap` jobs or more and another tenant has one queued.

    Call in the claim's transaction, right before the claim: it locks the tenant row
    (released at commit), so the count and the claim are atomic per tenant.
    """
    if cap <= 0:
        return False
    job_tenant = select(Job.tenant_id).where(Job.id == job_id).scalar_subquery()

    def others_waiting(tenant: Any) -> Any:
        return exists().where(
            Job.status == "queued", Job.tenant_id != tenant, Job.cancel_requested.is_(False)
        )

    # Nobody else waits (the usual case): no lock and no count. A job of another tenant
    # queued after this read is one that arrived after this claim.
    if not session.scalar(select(others_waiting(job_tenant))):
        return False
    # The lock is its own statement: the counts below must be read after it is held.
    tenant_id = session.scalar(select(Tenant.id).where(Tenant.id == job_tenant).with_for_update())
    if tenant_id is None:
        return False
    # Shares are counted in workers: a stacked sweep group (many trials, one lease owner)
    # occupies one worker, as does a single job.
    running = (
        select(func.count(func.distinct(Job.lease_owner)))
        .where(Job.tenant_id == tenant_id, Job.status == "running")
        .scalar_subquery()
    )
    at_cap, waiting = session.execute(select(running >= cap, others_waiting(tenant_id))).one()
    return bool(at_cap and waiting)
