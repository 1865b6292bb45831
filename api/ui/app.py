"""Mount the dashboard on the API app: pages, the event stream, static files, a 404 page."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.deps import SessionDep, SettingsDep
from api.ui import events, pages
from api.ui import session as ui_session

STATIC_DIR = Path(__file__).parent / "static"


def page_not_found(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Any other /ui path: the dashboard's 404 page."""
    found = ui_session.page_session(request, session, settings)
    if found is None:
        return pages.not_found(request)
    return pages.not_found(request, found[1], found[0])


def mount_ui(app: FastAPI) -> None:
    """Serve the dashboard under /ui (static files under /ui/static)."""
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.include_router(pages.router)
    app.include_router(events.router)
    app.add_api_route(
        "/ui/{rest:path}", page_not_found, methods=["GET"], include_in_schema=False
    )
