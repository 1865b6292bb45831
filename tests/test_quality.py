"""Lint and type checks are part of the suite: `ruff check .` and mypy must both pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> list[str]:
    """The tool from the interpreter's environment (the .venv), else as a module."""
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", name]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_passes() -> None:
    result = _run([*_tool("ruff"), "check", "--no-cache", "."])
    assert result.returncode == 0, f"ruff check . failed:\n{result.stdout}\n{result.stderr}"


def _mypy_cache_args() -> list[str]:
    """A cache outside the checkout, so a fresh clone's run reuses what an earlier one found.

    mypy revalidates every cached module against its source hash, so a stale entry is
    rechecked, never trusted; only the first run on a machine pays for torch's stubs. Where
    that folder cannot be written (mypy would crash), the checkout's own cache is used.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = base / "softlabel" / "mypy"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return []
    return ["--cache-dir", str(cache)] if os.access(cache, os.W_OK) else []


def test_mypy_passes() -> None:
    result = _run([*_tool("mypy"), *_mypy_cache_args(), "api", "core", "worker", "softlabel"])
    assert result.returncode == 0, f"mypy failed:\n{result.stdout}\n{result.stderr}"
