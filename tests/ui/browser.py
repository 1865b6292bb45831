"""Headless Debian chromium under Playwright, with a watch on console errors and failed requests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """Debian's chromium (or another Chrome) on PATH; Playwright never downloads one here."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Watch:
    """Console errors and failed requests of a browser context; some 4xx are expected."""

    problems: list[str] = field(default_factory=list)
    expected: list[tuple[int, str]] = field(default_factory=list)
    seen_expected: list[tuple[int, str]] = field(default_factory=list)

    def expect(self, status: int, url_part: str) -> None:
        """The next response with this status and URL part is part of the test, not a failure."""
        self.expected.append((status, url_part))

    def _is_expected(self, status: int, url: str) -> bool:
        for item in self.expected:
            if item[0] == status and item[1] in url:
                self.seen_expected.append(item)
                return True
        return False

    def on_response(self, response: Any) -> None:
        """A 4xx/5xx response is a failure unless the test announced it."""
        if response.status >= 400 and not self._is_expected(response.status, response.url):
            self.problems.append(f"HTTP {response.status} {response.url}")

    def on_console(self, message: Any) -> None:
        """Console errors fail the test, but for the browser's note on an announced 4xx."""
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        if "Failed to load resource" in message.text and any(
            str(status) in message.text for status, part in self.seen_expected
        ):
            return
        self.problems.append(f"console error: {message.text} at {url}")

    def on_failed(self, request: Any) -> None:
        """A request that failed; an event stream cut off by navigating away is not one."""
        failure = request.failure or ""
        if "ERR_ABORTED" in failure and "/ui/events" in request.url:
            return
        self.problems.append(f"request failed: {request.url} ({failure})")

    def attach(self, page: Any) -> Any:
        """Watch this page."""
        page.on("response", self.on_response)
        page.on("console", self.on_console)
        page.on("requestfailed", self.on_failed)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.watch_problems = self.problems
        return page


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless chromium; the test skips, saying why, where none can be found or started."""
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def shoot(page: Any, out: Path, name: str) -> Path:
    """A full-page screenshot under the test's tmp dir."""
    target = out / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    return target
