"""P3: an 8-α sweep vs one job of the same spec, through the API, and where the time goes.

    python -m bench.sweep [--reps N] [--embedded] [--epochs E]

* **Through the API** (the P3 measure, SPEC section 10: sweep ≤ 2.5× one job). A real uvicorn
  API and a real Celery worker on Postgres + Redis (as bench/overhead.py: a database of its
  own, created and dropped), warmed by one job and one small sweep first. Then, interleaved
  `--reps` times: one job (digits, MLP [128], 20 epochs, batch 64, early stopping off,
  α = 0.1) and one 8-α sweep of the same spec. The job's time is finished_at − created_at, the
  sweep's finished_at − created_at of the sweep (its report and plots included); the client's
  view (POST sent → final status seen) is printed too. Per side it splits the time into queue
  (created → started), training (timing.train_s), the rest of the job (evaluation, temperature
  fit, metrics, artifacts, storage) and, for the sweep, the finalize step (report + plots).
  The job figures are drawn by the API on first request; the cost of that first request is
  printed apart (it is not on the path to finished_at).
* **In process, by step**: the same job and sweep run here once with timers around the
  training steps, per-epoch validation, evaluation, temperature fits, metrics (calibration
  reports, the estimators included), the post-hoc fits and their cross-fitted scores, the
  projection, serialisation (model, predictions.npz), and the figures drawn from the results,
  to show where the time goes.

Wall-clock timings on a shared machine are noisy; only ratios from one run are meant to be
compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.overhead import (  # noqa: E402
    api_sample,
    configure,
    create_database,
    drop_database,
    make_key,
    ts,
)

ALPHAS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
ONE_JOB_ALPHA = 0.1
TARGET = 2.5


def job_spec(alpha: float, epochs: int) -> dict[str, Any]:
    """The P3 spec: digits, MLP [128], batch 64, early stopping off, on the CPU."""
    return {
        "dataset": {"source": "builtin", "name": "digits"},
        "model": {"arch": "mlp", "hidden": [128]},
        "loss": {"alpha": alpha},
        "training": {"epochs": epochs, "batch_size": 64, "device": "cpu",
                     "early_stopping": None},
    }


def sweep_body(epochs: int) -> dict[str, Any]:
    """The 8-α sweep over job_spec."""
    base = job_spec(ONE_JOB_ALPHA, epochs)
    del base["loss"]
    return {"base": base, "alphas": list(ALPHAS)}


# --------------------------------------------------------------------------- through the API


def run_sweep(client: Any, epochs: int) -> dict[str, float]:
    """POST one sweep, wait for it; its times (seconds) split by step."""
    sent = time.time()
    resp = client.post("/v1/sweeps", json=sweep_body(epochs))
    if resp.status_code != 202:
        raise RuntimeError(f"POST /v1/sweeps: {resp.status_code} {resp.text}")
    sweep_id = resp.json()["id"]
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
        if sweep["status"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.1)
    seen = time.time()
    if sweep["status"] != "succeeded":
        raise RuntimeError(f"sweep {sweep_id} ended {sweep['status']}")
    jobs = client.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 100}).json()["items"]
    results = [client.get(f"/v1/jobs/{j['id']}/result").json() for j in jobs]
    created, finished = ts(sweep["created_at"]), ts(sweep["finished_at"])
    started = min(ts(j["started_at"]) for j in jobs)
    last_trial = max(ts(j["finished_at"]) for j in jobs)
    train = max(float(r["timing"]["train_s"]) for r in results)  # one stacked train_s
    return {"total": finished - created, "seen": seen - sent, "queue": started - created,
            "train": train, "rest": last_trial - started - train, "finalize": finished - last_trial,
            "figures": first_figures(client, jobs[0]["id"])}


def run_job(client: Any, epochs: int) -> dict[str, float]:
    """One job through the API; its times (seconds) split by step."""
    # polled like the sweep in run_sweep: both sides of the ratio are waited on the same way
    done = api_sample(client, job_spec(ONE_JOB_ALPHA, epochs), poll=0.1, long_poll=False)
    job = done["job"]
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
    created, started, finished = (ts(job[k]) for k in ("created_at", "started_at", "finished_at"))
    train = float(result["timing"]["train_s"])
    return {"total": finished - created, "seen": done["seen"] - done["sent"],
            "queue": started - created, "train": train, "rest": finished - started - train,
            "finalize": 0.0, "figures": first_figures(client, job["id"])}


def first_figures(client: Any, job_id: str) -> float:
    """Seconds the first requests of a job's two figures take (the API draws them then)."""
    t0 = time.perf_counter()
    for name in ("reliability.png", "penultimate.png"):
        resp = client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        if resp.status_code != 200 or not resp.content.startswith(b"\x89PNG"):
            raise RuntimeError(f"{name} of {job_id}: {resp.status_code}")
    return time.perf_counter() - t0


def through_api(args: argparse.Namespace) -> None:
    """Start API + worker, warm them, time one job and one sweep interleaved; print."""
    import tempfile

    import httpx

    from softlabel.server import migrate
    from tests.processes import start_api, start_worker, stop_process

    var_dir = Path(tempfile.mkdtemp(prefix="softlabel-bench-sweep-"))
    configure(args.embedded, var_dir)
    if not args.embedded:
        create_database()
    procs = []
    try:
        migrate("head")
        key = make_key()
        procs.append(start_worker(var_dir / "worker.log"))
        api = start_api(var_dir / "api.log")
        procs.append(api)
        client = httpx.Client(base_url=api.info["url"], timeout=30,
                              headers={"Authorization": f"Bearer {key}"})
        run_job(client, 1)  # warm-up: imports in the worker and the API, fonts
        run_sweep(client, 1)
        samples: dict[str, list[dict[str, float]]] = {"job": [], "sweep": []}
        for rep in range(args.reps):
            for side in (("job", "sweep") if rep % 2 == 0 else ("sweep", "job")):
                run = run_job if side == "job" else run_sweep
                samples[side].append(run(client, args.epochs))
        client.close()
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        if not args.embedded:
            drop_database()
    print_api(samples, args)


def print_api(samples: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    """Medians per step, the P3 ratio, and the client's view."""
    med = {side: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
           for side, runs in samples.items()}
    print(f"\n== through the API, median of {args.reps} "
          f"({'SQLite + filesystem broker' if args.embedded else 'Postgres + Redis'}) ==")
    cols = ("total", "queue", "train", "rest", "finalize", "seen", "figures")
    print(f"{'':16s}" + "".join(f"{c:>10s}" for c in cols))
    for side, label in (("job", "one job"), ("sweep", "8-alpha sweep")):
        print(f"{label:16s}" + "".join(f"{med[side][c]:10.3f}" for c in cols))
    ratio = med["sweep"]["total"] / med["job"]["total"]
    print("(s; total = finished_at - created_at; rest = post-training work of the job or of the "
          "stacked group up to its last trial; finalize = report + sweep plots; seen = as the "
          "client saw it; figures = first GET of reliability.png + penultimate.png)")
    print(f"P3 sweep / one job (finished_at): {ratio:.2f}x (target <= {TARGET}x) "
          f"{'OK' if ratio <= TARGET else 'MISSED'}; as the client saw it: "
          f"{med['sweep']['seen'] / med['job']['seen']:.2f}x; "
          f"all sweep totals {[round(s['total'], 2) for s in samples['sweep']]}, "
          f"job totals {[round(s['total'], 2) for s in samples['job']]}")


# --------------------------------------------------------------------------- in process


@contextmanager
def probes(totals: dict[str, float]) -> Iterator[None]:
    """Time calls of the steps of a job (module attributes patched, restored on exit)."""
    from core.ml import finish, posthoc, stacked_posthoc, sweep, train

    targets: list[tuple[Any, str, str]] = [
        (train, "train_one_epoch", "training steps"),
        (sweep._Stack, "train_epoch", "training steps"),
        (train, "evaluate", "per-epoch validation"),
        (sweep._Stack, "validate", "per-epoch validation"),
        (train, "epoch_row", "per-epoch metrics"),
        (sweep, "epoch_rows", "per-epoch metrics"),
        (finish, "evaluate", "final evaluation"),
        (finish, "fit_temperatures", "temperature fit"),
        (stacked_posthoc, "fit_temperatures", "temperature fit"),
        (finish, "calibration_reports", "metrics (calibration reports)"),
        (stacked_posthoc, "calibration_reports", "metrics (calibration reports)"),
        (finish, "_projection_block", "projection"),
        (finish, "safetensors_save", "serialisation"),
        (finish, "predictions_npz", "serialisation"),
        (posthoc, "_vector_newton", "post-hoc fits (vector/matrix scaling)"),
        (posthoc, "_affine", "post-hoc fits (vector/matrix scaling)"),
        (posthoc, "isotonic_fit", "post-hoc fits (isotonic)"),
        (stacked_posthoc, "scores_rows", "post-hoc cross-fitted scores"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]

    def timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                totals[label] += time.perf_counter() - t0
        return wrapper

    for (owner, name, label), (_, _, fn) in zip(targets, saved, strict=True):
        setattr(owner, name, timed(fn, label))
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def profile_side(label: str, fn: Callable[[], list[Any]]) -> None:
    """Run fn under the probes, draw each output's figures, print the split."""
    from core.ml.figures import figure_names, render_figure

    totals: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    with probes(totals):
        outputs = fn()
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    for i, out in enumerate(outputs):
        for name in figure_names(out.result):
            render_figure(name, {**out.result, "spec": {}}, key=f"{label}-{i}-{t1}")
    drawn = time.perf_counter() - t1
    print(f"\n{label}: {wall:.3f} s in run_experiment/run_trials; then figures "
          f"{drawn:.3f} s (drawn on request, not on the job's path)")
    for step, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {step:40s}{seconds:8.3f} s {100 * seconds / wall:6.1f} %")
    rest = wall - sum(totals.values())  # the timed steps do not nest
    print(f"  {'other (data, setup, bookkeeping)':40s}{rest:8.3f} s")


def in_process(epochs: int) -> None:
    """The job and the sweep in this process, split by step."""
    from core.ml.experiment import run_experiment
    from core.ml.sweep import run_trials
    from core.spec import JobSpec

    def resolved(alpha: float) -> dict[str, Any]:
        return JobSpec.model_validate(job_spec(alpha, epochs)).resolved()

    run_experiment(resolved(ONE_JOB_ALPHA))  # warm-up of both paths (first calls import
    run_trials([resolved(a) for a in ALPHAS])  # and build what later calls reuse)
    print("\n== in process, by step (one run each) ==")
    profile_side("one job", lambda: [run_experiment(resolved(ONE_JOB_ALPHA))])
    profile_side("8-alpha stacked sweep", lambda: run_trials([resolved(a) for a in ALPHAS]))


def main() -> None:
    """Through the API (P3), then the in-process split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--embedded", action="store_true", help="SQLite + filesystem broker")
    parser.add_argument("--skip-api", action="store_true", help="only the in-process split")
    args = parser.parse_args()
    print(f"P3: digits, MLP [128], {args.epochs} epochs, batch 64, early stopping off, "
          f"alphas {list(ALPHAS)}")
    if not args.skip_api:
        through_api(args)
    in_process(args.epochs)


if __name__ == "__main__":
    main()
