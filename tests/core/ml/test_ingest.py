"""Streaming ingest (core.ml.ingest) gives exactly what in-memory parsing gives: the same
arrays, class names and dataset_sha256, for every format, layout, order and compression;
the worker's memory-mapped view of the canonical file holds the same arrays."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.ml.errors import InvalidDatasetError
from core.ml.ingest import Limits, ingest_file
from core.ml.npz_map import load_npz_mapped
from core.ml.upload import dataset_sha256, parse_upload

RNG = np.random.default_rng(0)
Y3 = np.arange(60) % 3


def _npz(compressed: bool = False, **arrays: Any) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _parquet() -> bytes:
    table = pa.table({"x": RNG.normal(size=90), "z": np.arange(90),
                      "cls": [["p", "q", "r"][i % 3] for i in range(90)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=20)
    return buf.getvalue()


def _csv(labels: list[Any]) -> bytes:
    rows = "".join(f"{RNG.normal():.4f},{i},{labels[i % len(labels)]}\n" for i in range(100))
    return ("f1,f2,label\n" + rows).encode()


CASES = [
    ("flat-float64", _npz(X=RNG.normal(size=(60, 5)), y=np.array(["cat", "dog", "owl"] * 20)),
     "npz", None),
    ("flat-compressed", _npz(True, X=RNG.normal(size=(60, 5)).astype(np.float32), y=Y3),
     "npz", None),
    ("nhwc-uint8", _npz(X=RNG.integers(0, 255, (60, 8, 8, 3), dtype=np.uint8), y=Y3),
     "npz", None),
    ("nchw-compressed", _npz(True, X=RNG.integers(0, 255, (60, 3, 8, 8), dtype=np.uint8),
                             y=Y3), "npz", None),
    ("flat-fortran", _npz(X=np.asfortranarray(RNG.normal(size=(60, 7))), y=Y3), "npz", None),
    ("nhwc-fortran", _npz(X=np.asfortranarray(
        RNG.integers(0, 255, (60, 8, 8, 3), dtype=np.uint8)), y=Y3), "npz", None),
    ("nhw-float64-float-labels", _npz(X=RNG.normal(size=(60, 8, 8)), y=Y3.astype(float)),
     "npz", None),
    ("bool-features", _npz(X=RNG.normal(size=(60, 4)) > 0, y=np.arange(60) % 2 == 0),
     "npz", None),
    ("csv-strings", _csv(["a", "b", "c"]), "csv", None),
    ("csv-ints", _csv([0, 1, 2, 10]), "csv", None),
    ("parquet", _parquet(), "parquet", "cls"),
]


@pytest.mark.parametrize(("data", "fmt", "label"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_streamed_ingest_matches_in_memory_parsing(
    tmp_path: Path, data: bytes, fmt: str, label: str | None
) -> None:
    src = tmp_path / "upload"
    src.write_bytes(data)
    got = ingest_file(src, fmt, label, limits=Limits(), workdir=tmp_path)
    X, y, info = parse_upload(data, fmt, label)
    if info.get("image_shape") and X.ndim == 2:
        X = X.reshape(len(X), *info["image_shape"])
    mapped = load_npz_mapped(got.path)
    assert isinstance(mapped["X"], np.memmap)  # the worker maps X, it does not read it
    assert got.sha256 == dataset_sha256(X, y) == dataset_sha256(mapped["X"], mapped["y"])
    assert np.array_equal(np.asarray(mapped["X"]), X) and np.array_equal(mapped["y"], y)
    assert got.info["class_names"] == info["class_names"]
    assert (got.n_rows, got.n_features) == (len(y), int(np.prod(X.shape[1:])))


def test_truncated_and_crc_damaged_members_are_refused(tmp_path: Path) -> None:
    good = _npz(X=RNG.normal(size=(60, 5)), y=Y3)
    src = tmp_path / "upload"
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF  # inside X's data: the CRC check at its end fails
    src.write_bytes(bytes(damaged))
    with pytest.raises(InvalidDatasetError, match="NPZ"):
        ingest_file(src, "npz", None, limits=Limits(), workdir=tmp_path)


def test_a_later_csv_block_of_another_type_is_a_clear_error(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 2}\n" for i in range(200_000)) + "oops,1\n"
    src = tmp_path / "upload"
    src.write_bytes(("f,label\n" + rows).encode())
    with pytest.raises(InvalidDatasetError, match="could not parse the CSV file"):
        ingest_file(src, "csv", None, limits=Limits(), workdir=tmp_path)


def test_datasets_stored_before_streaming_still_load(tmp_path: Path) -> None:
    """The older canonical form (flat X deflated) is decompressed to a side file and mapped."""
    from core.ml.upload import to_npz_bytes

    X, y = RNG.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 2
    path = tmp_path / "old.npz"
    path.write_bytes(to_npz_bytes(X, y))
    mapped = load_npz_mapped(path)
    assert np.array_equal(mapped["X"], X) and np.array_equal(mapped["y"], y)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.npz"]  # side files unlinked
