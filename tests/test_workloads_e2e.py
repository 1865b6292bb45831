"""Issue 12 through the real API, Postgres, Redis and one real Celery worker: image uploads in
every layout and dtype (one uint8 colour set of tens of MB), a resnet-20 job, the cost in the
job document, and the 422s of layouts, decoded sizes and cost caps (nothing stored)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from core.config import get_settings
from core.db import session_scope
from core.models import Artifact, Dataset, Job, Sweep
from tests.processes import Proc, wait_for_job


@pytest.fixture(scope="module")
def engine(module_worker: Proc) -> Proc:
    """The module's one real worker (conftest's `module_worker`)."""
    return module_worker


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) uint8 images whose class is the bright channel / quadrant, and labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.integers(0, 80, size=(n, c, h, w)).astype(np.uint8)
    for k in range(3):
        if c == 3:
            X[y == k, k] += 150
        else:
            X[y == k, :, k * h // 3:(k + 1) * h // 3] += 150
    return X, y


def _upload(client: Any, data: bytes, name: str) -> Any:
    return client.post("/v1/datasets", files={"file": (name, data)})


def _count(model: Any) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _finished(client: Any, job_id: str, engine: Proc) -> dict[str, Any]:
    try:
        return wait_for_job(client, job_id, timeout=240)
    except AssertionError:
        print(engine.log_text()[-4000:])
        raise


LAYOUTS = [("NHW", np.float16, 1), ("NCHW", np.float32, 3), ("NHWC", np.uint8, 1),
           ("NHWC", np.uint8, 3)]


def test_every_layout_uploads_and_trains_a_cnn(client: Any, engine: Proc) -> None:
    jobs = {}
    for layout, dtype, c in LAYOUTS:
        X, y = _images(60, c, 12, 12)
        arr = {"NHW": X[:, 0], "NCHW": X, "NHWC": X.transpose(0, 2, 3, 1)}[layout].astype(dtype)
        resp = _upload(client, _npz(X=arr, y=y), f"{layout}-{c}.npz")
        assert resp.status_code == 201, resp.text
        ds = resp.json()
        assert ds["layout"] == layout and ds["dtype"] == np.dtype(dtype).name
        assert ds["image_shape"] == ([12, 12] if c == 1 else [3, 12, 12])
        job = client.post("/v1/jobs", json={
            "dataset": {"source": "upload", "id": ds["id"]},
            "model": {"arch": "cnn", "hidden": [8, 16]}, "optimizer": {"lr": 0.01},
            "training": {"epochs": 2, "augment": True, "early_stopping": None}})
        assert job.status_code == 202, job.text
        assert job.json()["cost"]["parameters"] > 0
        jobs[(layout, c)] = (job.json()["id"], np.dtype(dtype).name)
    for (layout, c), (job_id, dtype) in jobs.items():
        assert _finished(client, job_id, engine)["status"] == "succeeded", (layout, c)
        result = client.get(f"/v1/jobs/{job_id}/result").json()
        stored = "NHW" if c == 1 else "NCHW"
        assert result["dataset"]["layout"] == stored and result["dataset"]["dtype"] == dtype
        assert result["dataset"]["channels"] == c
        assert result["dataset"]["uploaded_layout"] == layout  # as sent, NHWC included


def test_uint8_colour_set_of_tens_of_mb_stays_uint8(client: Any, engine: Proc) -> None:
    X, y = _images(7000, 3, 32, 32)  # 21.5 MB as uint8, 86 MB as float32
    resp = _upload(client, _npz(X=X.transpose(0, 2, 3, 1), y=y), "cifar-like.npz")
    assert resp.status_code == 201, resp.text
    ds = resp.json()
    assert (ds["layout"], ds["dtype"], ds["n_features"]) == ("NHWC", "uint8", 3072)
    with session_scope() as s:
        art = s.scalar(select(Artifact).where(Artifact.key == f"datasets/{ds['id']}.npz"))
        assert art is not None and art.size_bytes < X.nbytes * 1.01  # not widened to float
    job = client.post("/v1/jobs", json={
        "dataset": {"source": "upload", "id": ds["id"]}, "model": {"arch": "linear"},
        "training": {"epochs": 1}})
    assert job.status_code == 202, job.text
    assert _finished(client, job.json()["id"], engine)["status"] == "succeeded"
    result = client.get(f"/v1/jobs/{job.json()['id']}/result").json()
    assert result["dataset"]["dtype"] == "uint8" and result["test"]["accuracy"] > 0.9


def test_resnet20_job_on_a_cifar_shaped_set(client: Any, engine: Proc) -> None:
    X, y = _images(90, 3, 32, 32, seed=1)
    ds = _upload(client, _npz(X=X, y=y), "tiny-cifar.npz").json()
    resp = client.post("/v1/jobs", json={
        "dataset": {"source": "upload", "id": ds["id"]},
        "model": {"arch": "resnet", "depth": 20},
        "optimizer": {"name": "sgd", "lr": 0.05, "nesterov": True, "weight_decay": 5e-4},
        "training": {"epochs": 2, "batch_size": 32, "augment": True,
                     "schedule": {"name": "step", "milestones": [1], "gamma": 0.1},
                     "early_stopping": None}})
    assert resp.status_code == 202, resp.text
    cost = resp.json()["cost"]
    assert cost["parameters"] == 269_722 - 650 + 195  # He et al.'s ResNet-20 with a 3-class head
    job = _finished(client, resp.json()["id"], engine)
    assert job["status"] == "succeeded", job
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert len(result["history"]) == 2 and result["dataset"]["image_shape"] == [3, 32, 32]
    assert {"accuracy", "nll", "brier", "ece", "reliability", "logit_gap"} <= set(result["test"])
    assert result["temperature_scaled"]["temperature"] > 0 and result["projection"] is not None


def _declaring(x_header: dict[str, Any], y_header: dict[str, Any]) -> bytes:
    """An NPZ whose .npy headers declare arrays it does not hold."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, head in (("X.npy", x_header), ("y.npy", y_header)):
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"fortran_order": False, **head})
            zf.writestr(name, buf.getvalue())
    return archive.getvalue()


def test_layouts_and_declared_sizes_are_refused_before_reading(client: Any) -> None:
    bad = _upload(client, _npz(X=np.zeros((9, 4, 4, 5), np.uint8), y=np.arange(9) % 3), "c5.npz")
    assert bad.status_code == 422 and "(N, H, W, C) or (N, C, H, W)" in bad.json()["detail"]
    y_ok = {"descr": "<i8", "shape": (900_000,)}
    cases = {
        "80 GB of float32 images": ({"descr": "<f4", "shape": (900_000, 3, 100, 80)}, y_ok),
        "bool X widened to float32": ({"descr": "|b1", "shape": (900_000, 1200)}, y_ok),
        "<U1000000 labels": ({"descr": "<f4", "shape": (1000, 4)},
                             {"descr": "<U1000000", "shape": (1000,)}),
    }
    for what, (xh, yh) in cases.items():
        resp = _upload(client, _declaring(xh, yh), "bomb.npz")
        assert resp.status_code == 422, (what, resp.text)
        limit = "256 characters" if what.startswith("<U") else "SOFTLABEL_MAX_DATASET_BYTES"
        assert limit in resp.json()["detail"], (what, resp.json()["detail"])
    assert _count(Dataset) == 0 and _count(Artifact) == 0


@pytest.fixture
def capped(client: Any) -> Iterator[Any]:
    """The client with small cost caps (real Settings, other values)."""
    small = get_settings().model_copy(update={"max_model_params": 100_000,
                                              "max_epoch_gflop": 0.2,
                                              "max_activation_bytes": 4 * 2**20})
    client.app.dependency_overrides[get_settings] = lambda: small
    yield client
    client.app.dependency_overrides.clear()


def test_cost_caps_are_422s_naming_cap_and_estimate(capped: Any, tmp_path: Path) -> None:
    big = capped.post("/v1/jobs", json={"model": {"arch": "mlp", "hidden": [512, 512]}})
    assert big.status_code == 422, big.text
    detail = big.json()["detail"]
    params = (64 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10)
    assert "SOFTLABEL_MAX_MODEL_PARAMS" in detail and f"{params:,}" in detail
    assert "100,000" in detail
    flops = capped.post("/v1/jobs", json={"model": {"arch": "cnn", "hidden": [32, 32]}})
    assert flops.status_code == 422 and "SOFTLABEL_MAX_EPOCH_GFLOP" in flops.json()["detail"]
    memory = capped.post("/v1/jobs", json={"model": {"arch": "cnn", "hidden": [8]},
                                           "training": {"batch_size": 65536}})
    assert memory.status_code == 422 and "SOFTLABEL_MAX_ACTIVATION" in memory.json()["detail"]
    # each trial fits, but 8 alphas x 2 seeds trained stacked do not
    sweep = capped.post("/v1/sweeps", json={
        "base": {"model": {"arch": "mlp", "hidden": [96]}},
        "alphas": [0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4], "seeds": [0, 1]})
    assert sweep.status_code == 422, sweep.text
    assert "stacked group of 16 trials" in sweep.json()["detail"]
    assert _count(Job) == 0 and _count(Sweep) == 0
    ok = capped.post("/v1/jobs", json={"model": {"arch": "mlp", "hidden": [96]}})
    assert ok.status_code == 202 and ok.json()["cost"]["parameters"] == 64 * 96 + 96 + 970
