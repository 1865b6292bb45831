"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes import catalog, datasets, health, jobs

API_DESCRIPTION = (
    "Softlabel trains classifiers with label-smoothed cross-entropy and reports how well "
    "calibrated they are (ECE, NLL, Brier, reliability, temperature scaling, logit gaps). "
    "Errors are RFC 9457 application/problem+json."
)


def create_app() -> FastAPI:
    """Build the app: routers by resource, one problem+json error handler."""
    app = FastAPI(title="Softlabel", version="1.0.0", description=API_DESCRIPTION)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(catalog.router)
    return app
