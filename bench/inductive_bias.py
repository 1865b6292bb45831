"""Inductive bias as an experiment (issue 16): learning curves per architecture, ECE under shift.

On digits (8×8) and a generated 28×28 image set ("shapes28": six stroke shapes at random
positions and sizes), trains linear / mlp / cnn / transformer × split.train_fraction
{0.05, 0.1, 0.25, 0.5, 1.0} × α {0, 0.1} × 3 seeds, in-process through core.ml.sweep.run_trials
(α × seeds stack into one vmapped model per architecture and fraction), evaluates every trial
under translate and gaussian_noise shifts at intensities 1–5, and prints the tables the sweep
report (core/services/curve_report.py) computes: learning curves, the smallest training size
reaching the target accuracy, the gaps between architectures, and ECE against intensity
before/after temperature scaling. Hyper-parameters are fixed up front, not tuned per result.

    .venv/bin/python -m bench.inductive_bias            # the full grid (minutes on 2 cores)
    .venv/bin/python -m bench.inductive_bias --quick    # 1 seed, 3 fractions, digits only
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
import torch

from core.ml import experiment
from core.ml.sweep import run_trials
from core.services.sweep_report import Trial, build_report
from core.spec import JobSpec

ARCHS: dict[str, dict[str, Any]] = {
    "linear": {"arch": "linear", "hidden": []},
    "mlp": {"arch": "mlp", "hidden": [128]},
    "cnn": {"arch": "cnn", "hidden": [16, 16]},
    "transformer": {"arch": "transformer", "hidden": [32]},
}
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
ALPHAS = (0.0, 0.1)
SEEDS = (0, 1, 2)
SHIFTS = [{"name": "translate"}, {"name": "gaussian_noise"}]
TARGET_ACCURACY = 0.9
BATCH, MIN_STEPS, MIN_EPOCHS, MAX_EPOCHS, PATIENCE = 32, 120, 8, 30, 5


def _segment(px: np.ndarray, py: np.ndarray, a: tuple[float, float], b: tuple[float, float]
             ) -> np.ndarray:
    """Distance of each grid point to the segment a–b."""
    ax, ay, bx, by = *a, *b
    t = np.clip(((px - ax) * (bx - ax) + (py - ay) * (by - ay))
                / max((bx - ax) ** 2 + (by - ay) ** 2, 1e-9), 0, 1)
    return np.hypot(px - ax - t * (bx - ax), py - ay - t * (by - ay))


def make_shapes28(n: int = 900, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Six classes of 28×28 stroke shapes (bar −, bar |, plus, x, ring, square) at random places."""
    rng = np.random.default_rng(seed)
    py, px = np.mgrid[0:28, 0:28].astype(np.float64)
    X = np.zeros((n, 28, 28), np.float32)
    y = np.arange(n) % 6
    rng.shuffle(y)
    for i, k in enumerate(y):
        r = rng.uniform(4, 8)
        cx, cy = rng.uniform(r + 1, 27 - r - 1, size=2)
        if k == 0:
            d = _segment(px, py, (cx - r, cy), (cx + r, cy))
        elif k == 1:
            d = _segment(px, py, (cx, cy - r), (cx, cy + r))
        elif k == 2:
            d = np.minimum(_segment(px, py, (cx - r, cy), (cx + r, cy)),
                           _segment(px, py, (cx, cy - r), (cx, cy + r)))
        elif k == 3:
            d = np.minimum(_segment(px, py, (cx - r, cy - r), (cx + r, cy + r)),
                           _segment(px, py, (cx - r, cy + r), (cx + r, cy - r)))
        elif k == 4:
            d = np.abs(np.hypot(px - cx, py - cy) - r)
        else:
            d = np.abs(np.maximum(np.abs(px - cx), np.abs(py - cy)) - r)
        width = rng.uniform(0.6, 1.4)
        img = np.clip(1.0 - (d - width), 0.0, 1.0) * rng.uniform(0.7, 1.0)
        X[i] = img + rng.normal(0.0, 0.05, size=img.shape)
    return X, y.astype(np.int64)


def epochs_for(n_train: int) -> int:
    """At least MIN_STEPS optimiser steps, between MIN_EPOCHS and MAX_EPOCHS epochs."""
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_STEPS / math.ceil(n_train / BATCH)))))


def spec_for(dataset: dict[str, Any], arch: str, fraction: float, alpha: float, seed: int,
             n_train_full: int) -> dict[str, Any]:
    """The resolved job spec of one trial."""
    n_train = max(1, round(fraction * n_train_full))
    return JobSpec.model_validate({
        "dataset": dataset, "model": ARCHS[arch], "split": {"train_fraction": fraction},
        "loss": {"alpha": alpha},
        "optimizer": {"name": "adamw", "lr": 0.003},
        "training": {"epochs": epochs_for(n_train), "batch_size": BATCH, "seed": seed,
                     "device": "cpu",
                     "early_stopping": {"metric": "val_nll", "patience": PATIENCE}},
        "evaluation": {"shifts": SHIFTS},
    }).resolved()


def run_dataset(name: str, dataset: dict[str, Any], arrays: Any, n_train_full: int,
                fractions: tuple[float, ...], seeds: tuple[int, ...]) -> list[Trial]:
    """Every (arch, fraction) group of trials, stacked over α × seeds."""
    trials = []
    for arch in ARCHS:
        for fraction in fractions:
            t0 = time.perf_counter()
            grid = [(a, s) for a in ALPHAS for s in seeds]
            specs = [spec_for(dataset, arch, fraction, a, s, n_train_full) for a, s in grid]
            outputs = run_trials(specs, arrays=arrays)
            for (alpha, seed), out in zip(grid, outputs, strict=True):
                trials.append(Trial(f"{name}-{arch}-{fraction}-{alpha}-{seed}", "succeeded", alpha,
                                    seed, {"model.arch": arch, "split.train_fraction": fraction},
                                    out.result if out else None))
            print(f"  {name:8s} {arch:12s} fraction {fraction:<5g} "
                  f"{time.perf_counter() - t0:6.1f} s", flush=True)
    return trials


def _ms(stats: dict[str, Any], digits: int = 3) -> str:
    if stats["mean"] is None:
        return "n/a"
    sd = "" if stats["std"] is None else f"±{stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}{sd}"


def print_curves(name: str, block: dict[str, Any]) -> None:
    """Accuracy, ECE and NLL per arch and α against training size."""
    for metric in block["metrics"]:
        first = block["curves"][0]["points"]
        head = " ".join(f"{p['n_train']:>12.0f}" for p in first)
        print(f"\n{name}: test {metric} (mean±sd over seeds) by n_train")
        print(f"{'arch':12s} {'α':>4s} {head}")
        for c in block["curves"]:
            cells = " ".join(f"{_ms(p[metric]):>12s}" for p in c["points"])
            print(f"{c['context']['model.arch']:12s} {c['alpha']:4g} {cells}")
    print(f"\n{name}: smallest n_train with seed-mean accuracy >= {block['target_accuracy']}")
    for s in block["smallest_size"]:
        print(f"  {s['context']['model.arch']:12s} α={s['alpha']:<4g} "
              f"{'not reached' if s['n_train'] is None else int(s['n_train'])}")
    print(f"\n{name}: gaps between architectures")
    for g in block["arch_gaps"]:
        per = ", ".join(f"{a} {v['accuracy']:.3f}/{v['ece']:.3f}" for a, v in g["by_arch"].items())
        print(f"  α={g['alpha']:<4g} {g['size']:8s} (fraction {g['train_fraction']:g}): acc/ECE "
              f"{per}; best acc {g['most_accurate']} (gap {g['accuracy_gap']:.3f}), lowest ECE "
              f"{g['best_calibrated']} (gap {g['ece_gap']:.3f})")


def print_shift(name: str, curves: list[dict[str, Any]], fraction: float) -> None:
    """ECE (before → after T) and accuracy against intensity at one training fraction."""
    for shift in sorted({c["shift"] for c in curves}):
        print(f"\n{name}: {shift} at train_fraction {fraction:g} — per intensity 0..5: "
              f"accuracy | ECE | ECE after temperature scaling")
        for c in curves:
            if c["shift"] != shift or c["context"]["split.train_fraction"] != fraction:
                continue
            pts = c["points"]
            acc = " ".join(f"{p['before']['accuracy']['mean']:.2f}" for p in pts)
            ece = " ".join(f"{p['before']['ece']['mean']:.3f}" for p in pts)
            ts = " ".join(f"{p['after']['ece']['mean']:.3f}" for p in pts)
            print(f"  {c['context']['model.arch']:12s} α={c['alpha']:<4g} acc {acc} | "
                  f"ECE {ece} | T {ts}")


def main() -> None:
    """Run the grid and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 fractions, digits only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--datasets", default="digits,shapes28", help="comma-separated")
    parser.add_argument("--json", default=None, help="also write the reports to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Per-trial figures (reliability, projection) are not needed here and cost more than
    # training the small groups; the metrics are computed exactly as in a job.
    experiment._reliability_png = lambda *a, **k: b""  # type: ignore[attr-defined]
    experiment._projection_png = lambda *a, **k: b""  # type: ignore[attr-defined]
    fractions, seeds = ((0.05, 0.25, 1.0), (0,)) if args.quick else (FRACTIONS, SEEDS)
    wanted = ["digits"] if args.quick else args.datasets.split(",")
    sets: list[tuple[str, dict[str, Any], Any, int]] = []
    if "digits" in wanted:
        sets.append(("digits", {"source": "builtin", "name": "digits"}, None, 1259))
    if "shapes28" in wanted:
        sets.append(("shapes28", {"source": "upload", "id": "shapes28"}, make_shapes28(), 636))
    reports = {}
    t0 = time.perf_counter()
    for name, dataset, arrays, n_full in sets:
        trials = run_dataset(name, dataset, arrays, n_full, fractions, seeds)
        reports[name] = build_report(trials, objective="val_nll", target_accuracy=TARGET_ACCURACY)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, torch threads {args.threads}")
    for name, report in reports.items():
        print_curves(name, report["learning_curves"])
        for fraction in (min(fractions), 1.0):
            print_shift(name, report["shift"], fraction)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: {"learning_curves": r["learning_curves"], "shift": r["shift"]}
                       for k, r in reports.items()}, fh, indent=1)


if __name__ == "__main__":
    main()
