"""P2 (SPEC §10): calibration metrics vs torchmetrics' multiclass_calibration_error.

On N x K float32 softmax probabilities (default 1M x 100), in one run with interleaved
repetitions, report median times as ratios against torchmetrics' functional
`multiclass_calibration_error` (15 bins, l1):

* our ECE alone            target <= 0.5x
* our full calibration_report (ECE, adaptive ECE, MCE, classwise ECE over all N x K entries,
  Brier, NLL, entropy, bins, and since issue 13 smooth ECE, debiased L2 ECE, ECE_sweep and the
  bootstrap intervals)  target <= 3.0x
* the issue-13 estimators alone (core.ml.estimators.estimator_report)  (info)

Usage: python bench/metrics.py [--n 1000000] [--k 100] [--reps 7] [--seed 0] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ml.calibration import calibration_report, expected_calibration_error  # noqa: E402
from core.ml.estimators import estimator_report  # noqa: E402


def make_data(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities of random logits, built in row chunks to bound peak memory."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.empty(n, k, dtype=torch.float32)
    rows = max(1, (1 << 22) // k)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        z = torch.randn(e - s, k, generator=g) * 3.0
        torch.softmax(z, dim=1, out=probs[s:e])
    labels = torch.randint(0, k, (n,), generator=g)
    # make the labels informative so accuracy and calibration are non-trivial
    agree = torch.rand(n, generator=g) < 0.6
    labels = torch.where(agree, probs.argmax(dim=1), labels)
    return probs, labels


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print medians, ratios and values."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="samples (rows)")
    ap.add_argument("--k", type=int, default=100, help="classes (columns)")
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, labels = make_data(args.n, args.k, args.seed)
    k = args.k
    print(
        f"P2 calibration metrics: N={args.n} K={k} float32, 15 bins, {args.reps} interleaved reps, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    cases: dict[str, Callable[[], object]] = {
        "torchmetrics ECE": lambda: float(
            multiclass_calibration_error(probs, labels, num_classes=k, n_bins=15, norm="l1")
        ),
        "our ECE": lambda: expected_calibration_error(probs, labels, n_bins=15),
        "our full report": lambda: calibration_report(probs, labels, n_bins=15),
        "new estimators": lambda: estimator_report(probs, labels, 15),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    values: dict[str, object] = {}
    for _ in range(args.reps):
        for name, fn in cases.items():
            dt, out = _timed(fn)
            times[name].append(dt)
            values[name] = out
    med = {name: statistics.median(ts) for name, ts in times.items()}
    anchor = med["torchmetrics ECE"]
    targets = {"our ECE": 0.5, "our full report": 3.0}
    print(f"{'case':20s} {'median s':>10s} {'min s':>8s} {'ratio':>7s} {'target':>8s}  ok")
    for name in cases:
        ratio = med[name] / anchor
        tgt = targets.get(name)
        ok = "" if tgt is None else ("yes" if ratio <= tgt else "NO")
        tgt_s = ("anchor" if name == "torchmetrics ECE" else "(info)") if tgt is None \
            else f"<= {tgt:.1f}x"
        print(
            f"{name:20s} {med[name]:10.4f} {min(times[name]):8.4f} {ratio:6.2f}x {tgt_s:>8s}  {ok}"
        )
    report = values["our full report"]
    assert isinstance(report, dict)
    ours, ref = float(values["our ECE"]), float(values["torchmetrics ECE"])  # type: ignore[arg-type]
    print(f"ECE ours={ours:.7f} torchmetrics={ref:.7f} |diff|={abs(ours - ref):.2e}")
    shown = ("accuracy", "ece", "ece_adaptive", "mce", "classwise_ece", "brier", "nll")
    print("report: " + ", ".join(f"{key}={report[key]:.5f}" for key in shown))
    extra = ("smooth_ece", "ece_debiased_l2", "ece_sweep")
    print("estimators: " + ", ".join(f"{key}={report[key]:.5f}" for key in extra)
          + f", ece_sweep_bins={report['ece_sweep_bins']}, ci95={report['ci95']['ece']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
