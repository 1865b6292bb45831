"""Upload parsing, validation, canonical bytes and architecture compatibility (torch-free)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.ml.arch_compat import arch_incompatibility, compatible_archs
from core.ml.builtin_datasets import BUILTIN_DATASETS
from core.ml.errors import InvalidDatasetError
from core.ml.upload import dataset_sha256, parse_upload, to_npz_bytes

ROOT = Path(__file__).resolve().parents[3]


def _csv(rows: list[str]) -> bytes:
    return ("\n".join(rows) + "\n").encode()


def _good_rows(n_per_class: int = 3) -> list[str]:
    rows = ["a,b,label"]
    for i in range(n_per_class):
        rows += [f"{i},{i * 0.5},cat", f"{i + 10},{-i},dog"]
    return rows


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_csv_with_string_labels():
    X, y, info = parse_upload(_csv(_good_rows()), "csv", "label")
    assert X.dtype == np.float32 and X.shape == (6, 2)
    assert y.dtype == np.int64 and y.tolist() == [0, 1] * 3
    assert info["class_names"] == ["cat", "dog"]
    assert info["feature_names"] == ["a", "b"]
    assert info["n_classes"] == 2 and info["n_rows"] == 6 and info["image_shape"] is None


def test_csv_default_label_column_and_integer_labels():
    rows = ["x,label"] + [f"{i},{i % 3 + 5}" for i in range(9)]
    X, y, info = parse_upload(_csv(rows), "csv", None)
    assert info["class_names"] == ["5", "6", "7"]
    assert sorted(set(y.tolist())) == [0, 1, 2]


def test_parquet():
    table = pa.table({"f1": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "f2": [1, 2, 3, 4, 5, 6],
                      "cls": ["x", "y", "x", "y", "x", "y"]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    X, y, info = parse_upload(buf.getvalue(), "parquet", "cls")
    assert X.shape == (6, 2) and info["class_names"] == ["x", "y"]
    assert X[:, 1].tolist() == [1, 2, 3, 4, 5, 6]


def test_npz_flat_and_images():
    X = np.arange(24, dtype=np.float64).reshape(6, 4)
    y = np.array([0, 1, 0, 1, 0, 1])
    X2, y2, info = parse_upload(_npz(X=X, y=y), "npz", None)
    assert X2.dtype == np.float32 and np.array_equal(X2, X) and y2.tolist() == y.tolist()
    imgs = np.zeros((6, 2, 3), dtype=np.float32)
    X3, _, info3 = parse_upload(_npz(X=imgs, y=y), "npz", None)
    assert X3.shape == (6, 2, 3) and info3["image_shape"] == [2, 3]  # images keep their shape


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        (["a,b,label", "1,x,c", "2,y,d", "3,z,c", "4,w,d", "5,v,c", "6,u,d"], "'b'"),
        (["a,b,label", "1,nan,c", "2,1,d", "3,1,c", "4,1,d", "5,1,c", "6,1,d"], "'b'"),
        (["a,b,label", "1,inf,c", "2,1,d", "3,1,c", "4,1,d", "5,1,c", "6,1,d"], "'b'"),
        (["a,b,label", "1,,c", "2,1,d", "3,1,c", "4,1,d", "5,1,c", "6,1,d"], "'b'"),
        (["a,label", "1,c", "2,c", "3,c"], "at least 2 classes"),
        (["a,b,target", "1,2,c", "2,3,d"], "label column 'label' not found"),
        (["a,label", "1,c", "2,c", "3,c", "4,d", "5,d"], "fewer than 3 rows"),
        (["a,b,label", "1,2,c", "1,2,3,4"], "could not parse"),
    ],
)
def test_bad_csv_names_the_problem(rows, needle):
    with pytest.raises(InvalidDatasetError, match=needle.replace("(", r"\(")):
        parse_upload(_csv(rows), "csv", None)


def test_limits():
    data = _csv(["a,b,label"] + [f"{i},{i},{i % 3}" for i in range(9)])
    with pytest.raises(InvalidDatasetError, match="too many rows"):
        parse_upload(data, "csv", None, max_rows=8)
    with pytest.raises(InvalidDatasetError, match="too many feature columns"):
        parse_upload(data, "csv", None, max_columns=1)
    with pytest.raises(InvalidDatasetError, match="too many classes"):
        parse_upload(data, "csv", None, max_classes=2)
    with pytest.raises(InvalidDatasetError, match="fewer than 4 rows"):
        parse_upload(data, "csv", None, min_rows_per_class=4)


def test_pickled_object_array_refused():
    X = np.zeros((6, 2))
    y = np.array([{"evil": 1}] * 6, dtype=object)
    with pytest.raises(InvalidDatasetError, match="pickle"):
        parse_upload(_npz(X=X, y=y), "npz", None)
    with pytest.raises(InvalidDatasetError, match="pickle"):
        parse_upload(_npz(X=np.array([[object()]] * 6, dtype=object), y=np.zeros(6)), "npz", None)


def test_bad_npz():
    with pytest.raises(InvalidDatasetError, match="missing"):
        parse_upload(_npz(X=np.zeros((6, 2))), "npz", None)
    with pytest.raises(InvalidDatasetError, match="could not read"):
        parse_upload(b"not a zip", "npz", None)
    with pytest.raises(InvalidDatasetError, match="shape"):
        parse_upload(_npz(X=np.zeros((6, 2)), y=np.zeros(5)), "npz", None)
    X = np.ones((6, 2))
    X[3, 1] = np.nan
    with pytest.raises(InvalidDatasetError, match="'x1'"):
        parse_upload(_npz(X=X, y=np.array([0, 1] * 3)), "npz", None)
    with pytest.raises(InvalidDatasetError, match="unsupported format"):
        parse_upload(b"", "xlsx", None)


def test_canonical_bytes():
    X = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    y = np.arange(7) % 2
    a, b = to_npz_bytes(X, y), to_npz_bytes(X.copy(), y.copy())
    assert a == b
    with zipfile.ZipFile(io.BytesIO(a)) as zf:
        assert sorted(zf.namelist()) == ["X.npy", "y.npy"]
    back = np.load(io.BytesIO(a), allow_pickle=False)
    assert np.array_equal(back["X"], X) and back["y"].dtype == np.int64
    X2, y2, _ = parse_upload(a, "npz", None)
    assert dataset_sha256(X2, y2) == dataset_sha256(X, y)
    assert dataset_sha256(X, y) != dataset_sha256(X, 1 - y)


def test_architecture_compatibility():
    d, i = BUILTIN_DATASETS["digits"], BUILTIN_DATASETS["iris"]
    assert compatible_archs(d.n_features, d.image_shape) == [
        "linear", "mlp", "cnn", "gru", "transformer", "resnet"]
    assert compatible_archs(i.n_features, i.image_shape) == ["linear", "mlp"]
    msg = arch_incompatibility("cnn", i.n_features, i.image_shape)
    assert msg is not None and "'cnn'" in msg and "image" in msg
    assert "unknown architecture" in (arch_incompatibility("vgg", 4, None) or "")


def test_upload_module_is_torch_free():
    code = "import sys, core.ml.upload; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
