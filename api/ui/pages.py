"""The dashboard's pages under /ui: server-rendered from the services the JSON API uses.

Pages render their tables on the server (the text equivalent of every chart) and embed the
JSON documents the API returns; /ui/static/ui.js draws the charts from them and changes state
through the JSON API itself (the session cookie authenticates it, with the CSRF header).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.deps import SessionDep, SettingsDep
from api.ui import session as ui_session
from api.ui import views
from core.catalog import build_catalog
from core.errors import NotFoundError
from core.models import Tenant
from core.services import browser_sessions, dashboard, datasets, job_reads, jobs, sweeps

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
router = APIRouter(prefix="/ui", include_in_schema=False)


def render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    """A template with the dashboard's security headers."""
    response = TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def not_found(request: Request, csrf: str = "", tenant: Tenant | None = None) -> HTMLResponse:
    """The one 404 page: the same for a missing id and another tenant's."""
    return render(request, "404.html", {"csrf": csrf, "tenant": tenant}, status_code=404)


def to_login(request: Request) -> RedirectResponse:
    """Redirect to the login page, coming back here afterwards."""
    target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return RedirectResponse(f"/ui/login?next={target}", status_code=303)


def safe_next(target: str | None) -> str:
    """A local /ui path to return to after login (never another host)."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/jobs"


@router.get("")
def home() -> RedirectResponse:
    """The dashboard starts on the jobs list."""
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/login")
def login_page(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    """The login form: an API key in, a session cookie out."""
    if settings.auth_disabled:
        return RedirectResponse(safe_next(next), status_code=303)
    token = ui_session.new_login_csrf()
    response = render(request, "login.html", {"csrf": token, "next": safe_next(next)})
    ui_session.set_cookie(request, response, ui_session.LOGIN_CSRF_COOKIE, token, 3600)
    return response


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    api_key: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=500)] = "/ui/jobs",
) -> Response:
    """Check the key and the form's CSRF token; set the HttpOnly session cookie."""
    expected = request.cookies.get(ui_session.LOGIN_CSRF_COOKIE)
    error = None
    token = None
    if not ui_session.tokens_match(expected, csrf):
        error = "The login form expired; it has been reloaded, please try again."
    else:
        token = browser_sessions.open_session(session, raw_key=api_key.strip())
        if token is None:
            error = "That API key is invalid or revoked. Create one with `softlabel keys create`."
    if token is None:
        fresh = ui_session.new_login_csrf()
        context = {"csrf": fresh, "next": safe_next(next), "error": error}
        response: Response = render(request, "login.html", context, status_code=401)
        ui_session.set_cookie(request, response, ui_session.LOGIN_CSRF_COOKIE, fresh, 3600)
        return response
    response = RedirectResponse(safe_next(next), status_code=303)
    ui_session.set_cookie(
        request, response, ui_session.SESSION_COOKIE, token, browser_sessions.SESSION_SECONDS
    )
    response.delete_cookie(ui_session.LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(
    request: Request, session: SessionDep, csrf: Annotated[str, Form(max_length=100)] = ""
) -> Response:
    """End the browser session (the form carries the session's CSRF token)."""
    found = ui_session.current_session(request, session)
    if found is not None and not ui_session.tokens_match(found.csrf_token, csrf):
        raise ui_session.CsrfError("The logout form lacks this session's CSRF token")
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(ui_session.SESSION_COOKIE, path="/")
    return response


@router.get("/jobs")
def jobs_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    status: Annotated[str | None, Query(max_length=20)] = None,
    tag: Annotated[str | None, Query(max_length=400)] = None,
    sweep_id: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """The tenant's jobs, newest first, filterable by status, tag and sweep; live progress."""
    found = ui_session.page_session(request, session, settings)
    if found is None:
        return to_login(request)
    tenant, csrf = found
    key, sep, value = (tag or "").partition(":")
    filters = job_reads.JobFilter(
        status=status if status in STATUSES else None,
        tag=(key, value) if sep and key else None,
        sweep_id=sweep_id or None,
    )
    rows, next_cursor = job_reads.list_jobs(
        session, tenant_id=tenant.id, limit=50, cursor=cursor or None, filters=filters
    )
    context = {
        "tenant": tenant,
        "csrf": csrf,
        "rows": [views.job_row(j) for j in rows],
        "next_cursor": next_cursor,
        "filters": {"status": status or "", "tag": tag or "", "sweep_id": sweep_id or ""},
        "statuses": STATUSES,
    }
    return render(request, "jobs.html", context)


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """One job: spec, status, metrics side by side, curves, reliability, projection, cancel."""
    found = ui_session.page_session(request, session, settings)
    if found is None:
        return to_login(request)
    tenant, csrf = found
    try:
        job = jobs.get_job(session, tenant_id=tenant.id, job_id=job_id)
    except NotFoundError:
        return not_found(request, csrf, tenant)
    result = job.result if job.status == "succeeded" else None
    context = {
        "tenant": tenant,
        "csrf": csrf,
        "job": views.job_row(job),
        "spec": job.spec,
        "failure": views.failure(job),
        "result": result,
        "metrics": views.metric_table(result) if result else None,
        "page_data": {"job": views.job_state(job), "result": result},
    }
    return render(request, "job.html", context)


@router.get("/sweeps")
def sweeps_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """The tenant's sweeps, newest first."""
    found = ui_session.page_session(request, session, settings)
    if found is None:
        return to_login(request)
    tenant, csrf = found
    rows, _ = sweeps.list_sweeps(session, tenant_id=tenant.id, limit=100, cursor=None, status=None)
    items = []
    for sweep in rows:
        progress = sweeps.sweep_progress(session, sweep_id=sweep.id)
        items.append(views.sweep_row(sweep, progress, sweeps.live_status(sweep, progress)))
    return render(request, "sweeps.html", {"tenant": tenant, "csrf": csrf, "rows": items})


@router.get("/sweeps/{sweep_id}")
def sweep_page(
    sweep_id: str, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """One sweep: progress, the table per grid point, recommendation, Pareto front, plots."""
    found = ui_session.page_session(request, session, settings)
    if found is None:
        return to_login(request)
    tenant, csrf = found
    try:
        sweep = sweeps.get_sweep(session, tenant_id=tenant.id, sweep_id=sweep_id)
    except NotFoundError:
        return not_found(request, csrf, tenant)
    progress = sweeps.sweep_progress(session, sweep_id=sweep.id)
    summary = views.sweep_row(sweep, progress, sweeps.live_status(sweep, progress))
    trials = dashboard.sweep_trials(session, tenant_id=tenant.id, sweep_id=sweep.id)
    report = sweep.report
    context = {
        "tenant": tenant,
        "csrf": csrf,
        "sweep": summary,
        "report": report,
        "rows": views.report_table(report) if report else [],
        "pooled_bins": views.pooled_bin_lines(report) if report else [],
        "trials": sorted((views.job_row(j) for j in trials), key=trial_order),
        "page_data": {"sweep": summary, "report": report},
    }
    return render(request, "sweep.html", context)


def trial_order(row: dict[str, Any]) -> tuple[float, int, str]:
    """Trials by α, then seed."""
    return (row["alpha"] or 0.0, row["seed"] or 0, row["id"])


@router.get("/datasets")
def datasets_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Uploaded datasets, the upload form and delete buttons."""
    found = ui_session.page_session(request, session, settings)
    if found is None:
        return to_login(request)
    tenant, csrf = found
    rows, _ = datasets.list_datasets(session, tenant_id=tenant.id, limit=200, cursor=None)
    context = {"tenant": tenant, "csrf": csrf, "rows": rows, "formats": datasets.FORMATS}
    return render(request, "datasets.html", context)


@router.get("/submit")
def submit_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """The form that builds a job or sweep spec from the catalog and posts it."""
    found = ui_session.page_session(request, session, settings)
    if found is None:
        return to_login(request)
    tenant, csrf = found
    uploads, _ = datasets.list_datasets(session, tenant_id=tenant.id, limit=200, cursor=None)
    catalog = build_catalog(settings=settings)
    context = {
        "tenant": tenant,
        "csrf": csrf,
        "catalog": catalog,
        "uploads": uploads,
        "page_data": {
            "datasets": catalog["datasets"],
            "uploads": [{"id": d.id, "name": d.name} for d in uploads],
        },
    }
    return render(request, "submit.html", context)
