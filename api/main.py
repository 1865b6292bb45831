"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api.deps import idempotency_guard
from api.errors import install_error_handlers
from api.middleware import install_middleware
from api.openapi import install_openapi
from api.routes import catalog, datasets, health, jobs, metrics, sweeps, webhooks
from api.safety import check_startup
from api.ui.app import mount_ui
from core import __version__
from core.config import get_settings
from core.logging import configure_logging

API_DESCRIPTION = (
    "Softlabel trains classifiers with label-smoothed cross-entropy and reports how well "
    "calibrated they are (ECE, NLL, Brier, reliability, temperature scaling, logit gaps). "
    "Errors are RFC 9457 application/problem+json. Authenticate with "
    "`Authorization: Bearer <api key>`; another tenant's resources are 404. POSTs accept an "
    "`Idempotency-Key` header (kept for SOFTLABEL_IDEMPOTENCY_TTL_HOURS, default 24 h). "
    "Every response carries `X-Request-ID`."
)


def create_app() -> FastAPI:
    """Build the app: routers by resource, one problem+json error handler."""
    configure_logging(json_logs=get_settings().log_json)
    check_startup(get_settings())
    app = FastAPI(
        title="Softlabel",
        version=__version__,
        description=API_DESCRIPTION,
        dependencies=[Depends(idempotency_guard)],
    )
    install_error_handlers(app)
    install_middleware(app)
    install_openapi(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(sweeps.router)
    app.include_router(webhooks.router)
    app.include_router(metrics.router)
    app.include_router(datasets.router)
    app.include_router(catalog.router)
    mount_ui(app)
    return app
