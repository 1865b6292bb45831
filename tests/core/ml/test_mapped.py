"""Mapped arrays read without keeping their pages: row gathers equal X[idx], RSS drops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.ml.mapped import drop_mapped_pages, gather_rows
from core.ml.upload import dataset_sha256


def _rss_file() -> int:
    """This process's file-backed resident bytes (RssFile of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile line")


def _mapped(tmp_path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.memmap]:
    data = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "x.bin"
    data.tofile(path)
    return data, np.memmap(path, dtype=np.uint8, mode="r", shape=shape)


def test_gather_rows_equals_fancy_indexing_on_maps_and_arrays(tmp_path, monkeypatch):
    data, mapped = _mapped(tmp_path, (1000, 8, 8, 3))
    monkeypatch.setattr("core.ml.mapped.DROP_EVERY_BYTES", 192 * 7)  # chunks of 7 rows
    idx = np.random.default_rng(1).permutation(1000)[:333]
    for arr in (mapped, data):
        got = gather_rows(arr, idx)
        assert type(got) is np.ndarray and np.array_equal(got, data[idx])
    assert np.array_equal(gather_rows(mapped, np.array([], dtype=np.int64)), data[:0])
    assert np.array_equal(gather_rows(mapped, np.array([5, 5, 2])), data[[5, 5, 2]])


def test_reading_a_map_does_not_keep_its_pages(tmp_path):
    data, mapped = _mapped(tmp_path, (4096, 32, 32, 3))  # 12 MB
    y = np.zeros(4096, dtype=np.int64)
    before = _rss_file()
    assert dataset_sha256(mapped, y) == dataset_sha256(data, y)
    gather_rows(mapped, np.arange(0, 4096, 2))
    assert _rss_file() - before < 4 << 20  # without the drops: +12 MB
    np.asarray(mapped).sum()  # a plain read keeps every page ...
    assert _rss_file() - before > 10 << 20
    drop_mapped_pages(mapped[10:20])  # ... until they are dropped (via any view of the map)
    assert _rss_file() - before < 4 << 20
    drop_mapped_pages(data)  # an array in memory: nothing to drop
