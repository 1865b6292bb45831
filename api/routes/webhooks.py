"""The tenant's webhook signing secret."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import TenantDep
from api.routes.jobs import PROBLEMS
from api.schemas import WebhookSecret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.get("/secret", response_model=WebhookSecret, responses=PROBLEMS)
def webhook_secret(tenant: TenantDep) -> WebhookSecret:
    """The HMAC-SHA256 key that signs this tenant's webhooks (see X-Softlabel-Signature)."""
    return WebhookSecret(secret=tenant.webhook_secret)
