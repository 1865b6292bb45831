"""The README stays true: its two commands exist and its configuration table is complete."""

from __future__ import annotations

import subprocess
from pathlib import Path

from core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_names_the_two_commands_and_make_knows_them() -> None:
    assert "make demo" in README and "make test" in README
    for target in ("demo", "test"):
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        f"SOFTLABEL_{name.upper()}"
        for name in Settings.model_fields
        if f"`SOFTLABEL_{name.upper()}`" not in README
    ]
    assert missing == []


def test_every_route_is_in_the_api_table() -> None:
    from api.main import create_app

    paths = create_app().openapi()["paths"]
    undocumented = []
    for path in paths:
        if path.startswith("/v1/") or path in ("/healthz", "/readyz", "/metrics"):
            short = (
                path.replace("{job_id}", "{id}")
                .replace("{sweep_id}", "{id}")
                .replace("{dataset_id}", "{id}")
            )
            stem = short.split("/{id}")[0]
            if stem not in README:
                undocumented.append(path)
    assert undocumented == []
