"""The dashboard in headless chromium against a real API process, worker and Postgres.

Log in with a key, submit a digits sweep from the form, open the sweep page and check its
table and charts carry the JSON report's numbers, open a trial's job page, watch a long job's
progress arrive without a reload, cancel it from its page, and see a second tenant get 404.
Nothing waits on a guess at seconds: every wait is for a state the page shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.db import session_scope
from core.services.tenants import create_api_key
from tests.processes import start_api, stop_process
from tests.ui.browser import Watch, shoot

pytestmark = pytest.mark.timeout(600)
WAIT_MS = 240_000  # an upper bound for a finished state on a loaded 2-core machine, not a speed
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def api(db: str, redis_url: str, worker: Any, tmp_path: Path) -> Iterator[str]:
    """A real uvicorn API process (with the worker fixture running beside it)."""
    proc = start_api(tmp_path / "api.log")
    yield str(proc.info["url"])
    stop_process(proc)


def _login(context: Any, base: str, key: str, watch: Watch) -> Any:
    page = watch.attach(context.new_page())
    page.goto(f"{base}/ui/jobs")
    assert page.url.startswith(f"{base}/ui/login?next=")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/ui/jobs")
    return page


def _submit_sweep(page: Any, base: str, watch: Watch, out: Path) -> str:
    page.goto(f"{base}/ui/submit")
    page.get_by_label("α values, comma-separated (each in [0, 1))").fill("0,0.1")
    page.get_by_label("Seeds, comma-separated").fill("0")
    page.get_by_label("Hidden layer widths (mlp), comma-separated").fill("32")
    page.get_by_label("Epochs").fill("0")
    assert '"epochs": 0' in page.locator("#spec-preview").inner_text()
    watch.expect(422, "/v1/sweeps")
    page.get_by_role("button", name="Submit").click()
    error = page.locator("#err-epochs")
    error.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#err-epochs').textContent.length > 0")
    assert "greater than or equal to 1" in error.inner_text()
    shoot(page, out, "submit-with-error")
    page.get_by_label("Epochs").fill("3")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(f"{base}/ui/sweeps/swp_*")
    return str(page.url.rsplit("/", 1)[1])


def _ready(page: Any) -> None:
    """Wait until ui.js has drawn the page (it marks the body); say why when it never does."""
    try:
        page.wait_for_function("document.body.dataset.ready === 'true'")
    except Exception as exc:
        problems = getattr(page, "watch_problems", [])
        raise AssertionError(f"page {page.url} never got ready: {problems}") from exc


def _check_sweep_page(page: Any, report: dict[str, Any]) -> None:
    page.locator("#report-table").wait_for(timeout=WAIT_MS)
    _ready(page)
    for row in report["rows"]:
        cells = page.locator(f"#report-table tr[data-alpha='{row['alpha']}']")
        for metric in ("accuracy", "ece", "nll"):
            text = cells.locator(f"td[data-metric='{metric}']").inner_text()
            assert text.startswith(f"{row['test'][metric]['mean']:.4f}"), (metric, text)
    assert page.locator("#recommended-alpha").inner_text() == str(report["recommended"]["alpha"])
    assert page.locator("#chart-metrics .uplot canvas").count() >= 1
    n_front = len(report["pareto_front"])
    assert page.locator("#chart-pareto circle").count() == len(report["rows"]) + n_front
    titles = page.locator("#chart-pareto circle title")
    tips = titles.evaluate_all("ts => ts.map(t => t.textContent)")
    first = report["rows"][0]
    assert any(f"accuracy {first['test']['accuracy']['mean']:.4f}" in t for t in tips)
    assert page.locator("#chart-overlay polyline").count() == 1 + len(report["rows"])


def _check_job_page(page: Any, result: dict[str, Any]) -> None:
    _ready(page)
    acc = page.locator("#metrics-table td[data-metric='accuracy']").first.inner_text()
    assert acc == f"{result['test']['accuracy']:.4f}"
    scaled = page.locator("#metrics-table td[data-metric='ece']").nth(1).inner_text()
    assert scaled == f"{result['temperature_scaled']['test']['ece']:.4f}"
    assert page.locator("#chart-history .uplot canvas").count() >= 1
    bins = [b for b in result["test"]["reliability"] if b["count"]]
    assert page.locator("#chart-reliability rect.bar").count() == len(bins)
    points = result["projection"]["points"]
    assert page.locator("#chart-projection circle").count() == len(points)
    assert page.locator("#history-table tbody tr").count() == len(result["history"])


def _watch_and_cancel(page: Any, base: str, key: str, out: Path) -> str:
    body = {
        "dataset": {"source": "builtin", "name": "digits"},
        "model": {"arch": "mlp", "hidden": [32]},
        "training": {"epochs": 1000, "early_stopping": None},
        "calibration": {"temperature_scaling": False},
    }
    headers = {"Authorization": f"Bearer {key}"}
    job_id = httpx.post(f"{base}/v1/jobs", json=body, headers=headers).json()["id"]
    page.goto(f"{base}/ui/jobs/{job_id}")
    page.evaluate("window.__sameDocument = true")
    grew = (
        "(n) => { const t = document.querySelector('#job-progress .epoch');"
        " const m = t && t.textContent.match(/epoch (\\d+)/); return m && +m[1] >= n; }"
    )
    page.wait_for_function(grew, arg=2, timeout=WAIT_MS)
    seen = int(page.locator("#job-progress .epoch").inner_text().split("epoch ")[1].split()[0])
    page.wait_for_function(grew, arg=seen + 2, timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument") is True  # progress arrived, no reload
    shoot(page, out, "job-running")
    page.get_by_role("button", name="Cancel job").click()
    page.locator("#job-status .status-canceled").wait_for(timeout=WAIT_MS)
    # a job page that saw its job end reloads itself (the server renders the result): wait
    # for that new document, so that the next navigation does not race the reload
    page.wait_for_function("() => window.__sameDocument === undefined", timeout=WAIT_MS)
    page.locator("#job-status .status-canceled").wait_for(timeout=WAIT_MS)
    shoot(page, out, "job-canceled")
    assert httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers).json()["status"] == "canceled"
    return job_id


def _second_tenant_sees_404(chromium: Any, base: str, paths: list[str], out: Path) -> None:
    with session_scope() as s:
        _, other_key = create_api_key(s, tenant_name="globex")
    watch = Watch()
    context = chromium.new_context(viewport=DESKTOP)
    page = _login(context, base, other_key, watch)
    watch.expect(404, f"/ui/jobs/job_{'0' * 32}")
    missing = page.goto(f"{base}/ui/jobs/job_{'0' * 32}")
    missing_html = page.content()
    for path in paths:
        watch.expect(404, path)
        resp = page.goto(f"{base}{path}")
        assert resp.status == 404 == missing.status
        assert page.content() == missing_html  # the page names no id: byte-identical
    shoot(page, out, "other-tenant-404")
    context.close()
    assert not watch.problems, watch.problems


def test_dashboard_in_a_real_browser(
    chromium: Any, api: str, api_key: str, tmp_path: Path
) -> None:
    out = tmp_path / "screenshots"
    out.mkdir()
    watch = Watch()
    context = chromium.new_context(viewport=DESKTOP)
    page = _login(context, api, api_key, watch)
    sweep_id = _submit_sweep(page, api, watch, out)
    headers = {"Authorization": f"Bearer {api_key}"}
    page.locator("#report-table").wait_for(timeout=WAIT_MS)
    report = httpx.get(f"{api}/v1/sweeps/{sweep_id}/report", headers=headers).json()
    _check_sweep_page(page, report)
    shoot(page, out, "sweep")
    page.locator("a.trial-link").first.click()
    page.wait_for_url(f"{api}/ui/jobs/job_*")
    trial_id = page.url.rsplit("/", 1)[1]
    assert trial_id == report["rows"][0]["job_ids"][0]
    result = httpx.get(f"{api}/v1/jobs/{trial_id}/result", headers=headers).json()
    _check_job_page(page, result)
    shoot(page, out, "job")
    long_id = _watch_and_cancel(page, api, api_key, out)
    for name, path in (("jobs", "/ui/jobs"), ("datasets", "/ui/datasets"),
                       ("sweeps", "/ui/sweeps"), ("submit", "/ui/submit")):
        page.goto(f"{api}{path}")
        shoot(page, out, name)
    page.set_viewport_size(PHONE)
    for name, path in (("sweep", f"/ui/sweeps/{sweep_id}"), ("job", f"/ui/jobs/{trial_id}")):
        page.goto(f"{api}{path}")
        _ready(page)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], (name, width)  # wide tables scroll inside their box
        shoot(page, out, f"{name}-phone")
    context.close()
    assert not watch.problems, watch.problems
    _second_tenant_sees_404(chromium, api, [f"/ui/sweeps/{sweep_id}", f"/ui/jobs/{long_id}"], out)
    assert len(list(out.glob("*.png"))) >= 10
