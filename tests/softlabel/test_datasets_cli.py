"""`softlabel datasets upload|list|show|delete` and the client's streamed upload, against a
real API process (uvicorn) on Postgres."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from softlabel.client import Client
from tests.processes import cli, start_api, stop_process


@pytest.fixture
def api(db: str, redis_url: str, api_key: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    proc = start_api(tmp_path / "api.log")
    try:
        yield {"url": proc.info["url"], "key": api_key}
    finally:
        stop_process(proc)


def run_cli(api: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOFTLABEL_API_URL": api["url"], "SOFTLABEL_API_KEY": api["key"]}
    return subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=120)


def test_datasets_cli_streams_uploads_and_is_idempotent(api: dict[str, Any], tmp_path: Path
                                                        ) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "colour.npz"
    np.savez(path, X=rng.integers(0, 256, size=(900, 32, 32, 3), dtype=np.uint8),
             y=np.arange(900) % 3)  # 2.7 MB: three 1 MiB chunks
    first = run_cli(api, "datasets", "upload", str(path), "--name", "colour")
    assert first.returncode == 0, first.stderr
    ds_id = first.stdout.strip()
    assert ds_id.startswith("ds_") and "MiB/s" in first.stderr and "100.0%" in first.stderr
    again = run_cli(api, "datasets", "upload", str(path), "--quiet")
    assert again.returncode == 0 and again.stdout.strip() == ds_id and again.stderr == ""
    calls: list[tuple[int, int]] = []
    with Client(api["url"], api["key"]) as client:
        doc = client.datasets.upload(path, progress=lambda s, t: calls.append((s, t)))
        assert doc["id"] == ds_id and doc["layout"] == "NHWC" and doc["dtype"] == "uint8"
        size = path.stat().st_size
        assert len(calls) == 3 and calls[-1] == (size, size)
        csv = tmp_path / "t.csv"
        csv.write_text("a,b,kind\n" + "".join(f"{i},{i % 7},{'xyz'[i % 3]}\n" for i in range(30)))
        table = run_cli(api, "datasets", "upload", str(csv), "--label-column", "kind", "-q")
        assert table.returncode == 0, table.stderr
        assert client.datasets.get(table.stdout.strip())["class_names"] == ["x", "y", "z"]
    listed = run_cli(api, "datasets", "list")
    assert listed.returncode == 0 and {d["id"] for d in json.loads(listed.stdout)} == {
        ds_id, table.stdout.strip()}
    shown = run_cli(api, "datasets", "show", ds_id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["image_shape"] == [3, 32, 32]
    assert run_cli(api, "datasets", "delete", ds_id).returncode == 0
    assert run_cli(api, "datasets", "show", ds_id).returncode == 2
    missing = run_cli(api, "datasets", "upload", str(tmp_path / "nope.npz"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
