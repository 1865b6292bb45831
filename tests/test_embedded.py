"""The README's demo command in embedded mode: nothing configured, SQLite + filesystem broker.

Runs `softlabel demo` as the user would (a fresh directory, no SOFTLABEL_* variables), so the
API and the worker are real processes talking over HTTP and kombu's filesystem transport.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ALPHAS = ("0", "0.1")


def _softlabel() -> list[str]:
    script = Path(sys.executable).parent / "softlabel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "softlabel.cli"]


def test_demo_runs_embedded_and_prints_a_row_per_alpha(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTLABEL_")}
    env["MPLBACKEND"] = "Agg"
    result = subprocess.run(
        [*_softlabel(), "demo", "--no-serve", "--epochs", "3", "--alphas", ",".join(ALPHAS)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = tmp_path / "var" / "demo" / "demo.log"
    detail = (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}\n"
        f"demo.log:\n{log.read_text(errors='replace')[-3000:] if log.exists() else '(none)'}"
    )
    assert result.returncode == 0, detail

    # Embedded defaults: the state lives under ./var of the working directory.
    assert (tmp_path / "var" / "demo" / "softlabel.db").exists(), detail

    rows = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^\s*(\d+(?:\.\d+)?)\s+(\d\.\d{4})\s+(\d+\.\d{4})\s+(\d\.\d{4})", line)
        if match:
            rows[float(match.group(1))] = float(match.group(2))
    assert set(rows) == {float(a) for a in ALPHAS}, detail
    dashboard = r"Dashboard \(while serving\): http://127\.0\.0\.1:\d+/ui/sweeps/swp_"
    assert re.search(dashboard, result.stdout), detail
    assert all(0.0 < acc <= 1.0 for acc in rows.values()), detail

    out = tmp_path / "var" / "demo" / "out"
    for alpha in ALPHAS:
        for name in ("reliability.png", "penultimate.png"):
            plot = out / f"alpha_{float(alpha):g}_{name}"
            assert plot.exists(), f"missing {plot}\n{detail}"
            assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
