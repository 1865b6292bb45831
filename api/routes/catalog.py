"""The catalog: what a valid job spec may contain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import SettingsDep, TenantDep
from api.schemas import Problem
from core.catalog import build_catalog

router = APIRouter(prefix="/v1/catalog", tags=["catalog"])


@router.get("", responses={401: {"model": Problem, "description": "Missing or invalid API key"}})
def get_catalog(tenant: TenantDep, settings: SettingsDep) -> dict[str, Any]:
    """Builtin datasets, architectures, loss variants, optimisers, devices and metric names."""
    return build_catalog(settings=settings)
