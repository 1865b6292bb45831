"""Benchmark (issue 12 item 2, SPEC P7): a 1 GB NPZ through the API into Postgres, then a job.

Usage: python bench/ingest.py [--rows 340000] [--train-fraction 0.25] [--keep-file]

Runs against the local Postgres (a database `softlabel_ingest_<pid>` of its own, created and
dropped) and a private redis-server. It writes a uint8 (N, 32, 32, 3) NPZ (340,000 rows:
about 1 GB) to a temporary file, starts the API and a worker as real processes, uploads the
file as a streamed raw body (Postgres mode: the canonical NPZ is kept as 8 MiB chunk rows)
and trains a one-epoch `linear` job on it (after the same upload and job on 2,000 rows, so
imports and one-off allocations count as idle). While both run it samples every process's RSS
(VmRSS, and its anonymous / file-backed parts: the worker memory-maps the dataset, whose
file pages show as RssFile) and prints, per phase: wall time and peak RSS above idle for
the API and the worker (its busiest process). Target (SPEC P7): +400 MB above idle for
each, plus the training tensors on the worker (their size is printed: the split copies of
the rows the job trains and evaluates on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG_SERVER = os.environ.get("SOFTLABEL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
DB_NAME = f"softlabel_ingest_{os.getpid()}"
VAR_DIR = Path(tempfile.mkdtemp(prefix="softlabel-ingest-"))
os.environ.update({
    "SOFTLABEL_DATABASE_URL": f"{PG_SERVER}/{DB_NAME}",
    "SOFTLABEL_VAR_DIR": str(VAR_DIR),
    "SOFTLABEL_LOG_JSON": "false",
    "OMP_NUM_THREADS": "2",
})
MB = 1 << 20


def _status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of a process, in bytes (0 when it is gone)."""
    out = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in out:
                out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


class Sampler:
    """Every 20 ms: the RSS of each process of a tree (root and children), peaks kept."""

    def __init__(self, root_pid: int) -> None:
        import psutil

        self.root = psutil.Process(root_pid)
        self.peak: dict[int, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def pids(self) -> list[int]:
        """The root and its current children."""
        return [self.root.pid, *(c.pid for c in self.root.children(recursive=True))]

    def snapshot(self) -> dict[int, dict[str, int]]:
        """The current RSS of each process."""
        return {pid: _status(pid) for pid in self.pids()}

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid, now in self.snapshot().items():
                peak = self.peak.setdefault(pid, dict(now))
                for key, value in now.items():
                    peak[key] = max(peak[key], value)

    def start(self) -> Sampler:
        """Start sampling (peaks reset)."""
        self.peak = {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[int, dict[str, int]]:
        """Stop; the peaks per process."""
        self._stop.set()
        self._thread.join()
        return self.peak


def _grown(idle: dict[int, dict[str, int]], peak: dict[int, dict[str, int]]) -> dict[str, float]:
    """The busiest process's peak above its idle RSS (a new child: above the root's idle)."""
    best: dict[str, float] = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    root_idle = next(iter(idle.values()))
    for pid, p in peak.items():
        base = idle.get(pid, root_idle)
        grown = {k: (p[k] - base[k]) / MB for k in best}
        if grown["VmRSS"] > best["VmRSS"]:
            best = grown
    return best


def write_npz(path: Path, rows: int) -> None:
    """A learnable uint8 (N, 32, 32, 3) set with 10 classes, written without a big copy."""
    y = np.arange(rows) % 10
    X = np.lib.format.open_memmap(VAR_DIR / "X.npy", mode="w+", dtype=np.uint8,
                                  shape=(rows, 32, 32, 3))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 20_000):
        block = rng.integers(0, 100, size=(min(20_000, rows - start), 32, 32, 3), dtype=np.uint8)
        labels = y[start:start + len(block)]
        for k in range(10):
            block[labels == k, (k * 32) // 10] += 120
        X[start:start + len(block)] = block
    X.flush()
    del X
    np.save(VAR_DIR / "y.npy", y)
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.write(VAR_DIR / "X.npy", "X.npy")
        zf.write(VAR_DIR / "y.npy", "y.npy")
    (VAR_DIR / "X.npy").unlink()


def _upload(url: str, key: str, path: Path) -> dict:
    import httpx

    with open(path, "rb") as body:
        resp = httpx.post(f"{url}/v1/datasets?format=npz", content=body, timeout=3600,
                          headers={"Authorization": f"Bearer {key}",
                                   "Content-Type": "application/octet-stream"})
    if resp.status_code != 201:
        raise SystemExit(f"upload failed: {resp.status_code} {resp.text[:500]}")
    return resp.json()


def _train(url: str, key: str, dataset_id: str, fraction: float, holdout: float,
           on_trained: Callable[[], None] | None = None) -> dict:
    """Submit the job and wait for it; `on_trained` runs once its epoch shows as done."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    spec = {"dataset": {"source": "upload", "id": dataset_id}, "model": {"arch": "linear"},
            "split": {"train_fraction": fraction, "val": holdout, "test": holdout},
            "training": {"epochs": 1, "batch_size": 512, "early_stopping": None}}
    resp = httpx.post(f"{url}/v1/jobs", json=spec, headers=headers, timeout=60)
    if resp.status_code != 202:
        raise SystemExit(f"submit failed: {resp.status_code} {resp.text[:500]}")
    job_id = resp.json()["id"]
    while True:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=60).json()
        if on_trained is not None and ((job.get("progress") or {}).get("epoch") or 0) >= 1:
            on_trained()
            on_trained = None
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.2)


def _data_path_in_process(dataset_id: str, args: Any) -> None:
    """The worker's data path alone, in this process: stream from Postgres, map, prepare."""
    from core.ml.experiment import prepare_experiment
    from worker.attempt import load_upload

    spec = {"dataset": {"source": "upload", "id": dataset_id}, "model": {"arch": "linear"},
            "split": {"train_fraction": args.train_fraction, "val": args.holdout,
                      "test": args.holdout},
            "training": {"epochs": 1, "batch_size": 512, "early_stopping": None}}
    me = Sampler(os.getpid())
    idle = me.snapshot()
    me.start()
    t0 = time.monotonic()
    X, y = load_upload(dataset_id)
    prep = prepare_experiment(spec, arrays=(X, y))
    seconds = time.monotonic() - t0
    grown = _grown(idle, me.stop())
    d = prep.data
    tensors = sum(a.nbytes for a in (d.X_train, d.X_val, d.X_test, d.y_train, d.y_val,
                                     d.y_test)) / MB
    print(_line("worker data path in-process (load_upload + prepare_experiment)", seconds,
                grown))
    print(f"  its tensors: {tensors:.0f} MB; anon above idle minus them: "
          f"{grown['RssAnon'] - tensors:+.0f} MB; X is a {type(X).__name__}")


def _line(name: str, seconds: float, grown: dict[str, float]) -> str:
    return (f"{name}: {seconds:.1f} s; peak RSS +{grown['VmRSS']:.0f} MB above idle "
            f"(anon +{grown['RssAnon']:.0f} MB, file-backed +{grown['RssFile']:.0f} MB)")


def main() -> int:
    """Run the ingest benchmark and print its lines."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=340_000)
    parser.add_argument("--train-fraction", type=float, default=0.25)
    parser.add_argument("--holdout", type=float, default=0.05,
                        help="val and test fraction each (the evaluation's cost grows with it)")
    args = parser.parse_args()

    from sqlalchemy import create_engine, text

    from tests.processes import Proc, start_api, start_worker, stop_process
    from tests.worker.faults import RedisServer

    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    redis_server = RedisServer(VAR_DIR / "redis.log").start()
    os.environ["SOFTLABEL_BROKER_URL"] = redis_server.url
    procs: list[Proc] = []
    try:
        from core.db import session_scope
        from core.services.tenants import create_api_key
        from softlabel.server import migrate

        migrate("head")
        with session_scope() as s:
            _, key = create_api_key(s, tenant_name="bench")
        path = VAR_DIR / "big.npz"
        write_npz(path, args.rows)
        size_mb = path.stat().st_size / MB
        procs.append(start_api(VAR_DIR / "api.log"))
        procs.append(start_worker(VAR_DIR / "worker.log"))
        api, worker = (Sampler(p.pid) for p in procs)
        # warm-up: the same path on 2,000 rows, so imports (torch, pyarrow...) and the first
        # job's one-off allocations are idle memory, not ingest or training memory
        small = VAR_DIR / "small.npz"
        write_npz(small, 2000)
        warm = _upload(procs[0].info["url"], key, small)
        _train(procs[0].info["url"], key, warm["id"], args.train_fraction, 0.15)
        time.sleep(2)
        api_idle, worker_idle = api.snapshot(), worker.snapshot()
        print(f"load: {Path('/proc/loadavg').read_text().strip()}")
        print(f"file: {size_mb:.0f} MB NPZ, uint8 ({args.rows}, 32, 32, 3)")
        api.start()
        t0 = time.monotonic()
        ds = _upload(procs[0].info["url"], key, path)
        ingest = time.monotonic() - t0
        print(_line("ingest (API)", ingest, _grown(api_idle, api.stop())))
        print(f"ingest rate: {size_mb / ingest:.0f} MB/s; dataset {ds['id']} {ds['layout']} "
              f"{ds['dtype']}")
        worker.start()
        t0 = time.monotonic()
        phase: dict[str, Any] = {}

        def trained() -> None:
            phase["seconds"] = time.monotonic() - t0
            phase["peaks"] = worker.stop()
            worker.start()

        job = _train(procs[0].info["url"], key, ds["id"], args.train_fraction, args.holdout,
                     trained)
        seconds = time.monotonic() - t0
        finish_peaks = worker.stop()
        held = 2 * args.holdout
        used = (1 - held) * args.train_fraction + held  # train subsample + val + test rows
        tensors = used * args.rows * 3072 / MB
        if "peaks" in phase:
            grown = _grown(worker_idle, phase["peaks"])
            print(_line("load + train (worker: stream, map, split, 1 epoch)", phase["seconds"],
                        grown))
            print(f"worker training tensors (the split copies, uint8): {tensors:.0f} MB; "
                  f"anon peak above idle minus them: {grown['RssAnon'] - tensors:+.0f} MB")
        print(_line(f"whole job incl. evaluation (worker, {job['status']})", seconds,
                    _grown(worker_idle, finish_peaks | {
                        pid: {k: max(v, phase.get("peaks", {}).get(pid, {}).get(k, 0))
                              for k, v in p.items()} for pid, p in finish_peaks.items()})))
        _data_path_in_process(ds["id"], args)
        print(json.dumps({"ingest_s": round(ingest, 1), "file_mb": round(size_mb),
                          "job_s": round(seconds, 1), "job": job["status"]}))
        return 0 if job["status"] == "succeeded" else 1
    finally:
        for proc in procs:
            stop_process(proc)
        redis_server.stop()
        from core.db import get_engine

        get_engine().dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        admin.dispose()
        import shutil

        shutil.rmtree(VAR_DIR, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
