"""Fixtures of the browser tests."""

from tests.ui.browser import chromium

__all__ = ["chromium"]
