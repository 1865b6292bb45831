"""Benchmark (issue 12): training throughput of the image nets, the service's loop vs bare torch.

Usage: python bench/throughput.py [--epochs E] [--job-epochs J] [--threads T] [--reps R]
                                  [--skip-job]

* samples/s of `cnn` (default hidden [32, 64, 128]) on 28x28 grey images and of resnet-20 on
  32x32x3 colour images (uint8, as uploaded): the service's training loop (`core.ml.train.fit`,
  what the worker runs: uint8 batches cast and normalised per channel on the device, the
  label-smoothed loss of core.ml.losses, validation metrics every epoch) against a bare PyTorch
  loop of the same model, data and batch size (float32 tensors prepared in advance,
  `F.cross_entropy(label_smoothing=)`, no validation, the default NCHW layout). Also, for
  information, the same bare loop in the channels-last layout the service trains conv nets in,
  which shows the service's own per-epoch work (validation, checkpoints). Ratio = bare
  samples/s / service samples/s (target <= 1.10x). Both measured in this run, interleaved,
  each as samples of all epochs over their total time (the first, warm-up epoch included on
  both sides); the best of `--reps` runs per side.
* the wall time of a whole 28x28, 5,000-sample, 30-epoch `cnn` job (`run_experiment`: split,
  training, evaluation, calibration, temperature scaling, plots), in this process.
Synthetic data, seeded. Timings are wall-clock on this machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.ml.experiment import prepare_experiment, run_experiment  # noqa: E402
from core.ml.train import fit  # noqa: E402


def images(n: int, c: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) (grey: (N, H, W)) images with 10 classes, learnable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    X = rng.integers(0, 100, size=(n, c, size, size)).astype(np.uint8)
    for k in range(10):
        X[y == k, :, (k * size) // 10] += 120
    return (X[:, 0] if c == 1 else X), y


def spec_for(arch: dict, epochs: int) -> dict:
    """A job spec on an uploaded set (no early stopping: every epoch is timed)."""
    return {"dataset": {"source": "upload", "id": "bench"}, "model": arch,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "training": {"epochs": epochs, "batch_size": 128, "device": "cpu",
                         "early_stopping": None},
            "loss": {"alpha": 0.1}}


def service_rate(spec: dict, arrays: tuple[np.ndarray, np.ndarray]) -> float:
    """samples/s of core.ml.train.fit (every epoch's samples over its train_s)."""
    prep = prepare_experiment(spec, arrays=arrays)
    torch.manual_seed(0)
    model = prep.build()
    res = fit(model, prep.Xtr, prep.ytr, prep.Xva, prep.yva, prep.cfg,
              image_shape=prep.image_shape, fingerprint=prep.fingerprint)
    return res.samples_per_s


def bare_rate(spec: dict, arrays: tuple[np.ndarray, np.ndarray], *,
              channels_last: bool = False) -> float:
    """samples/s of a plain PyTorch loop on the same model and (pre-normalised float) data."""
    prep = prepare_experiment(spec, arrays=arrays)
    torch.manual_seed(0)
    model = prep.build()
    with torch.no_grad():
        X = model.inorm(prep.Xtr)  # type: ignore[operator]
    model.inorm.mean = None  # type: ignore[union-attr]  # data already normalised
    if channels_last:  # the layout the service trains conv nets in
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        X = X.contiguous(memory_format=torch.channels_last)
    y = prep.ytr
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    times = []
    for _ in range(prep.cfg.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(X), generator=gen)
        for start in range(0, len(X), 128):
            idx = perm[start:start + 128]
            loss = F.cross_entropy(model(X[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return len(X) * len(times) / sum(times)  # as fit's samples_per_s: every epoch, the first too


def main() -> None:
    """Run the benchmark and print one line per measurement."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--job-epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="interleaved runs per side (best kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("cnn 28x28x1", {"arch": "cnn"}, images(3000, 1, 28)),
             ("resnet-20 32x32x3", {"arch": "resnet", "depth": 20}, images(1500, 3, 32))]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.epochs} epochs per rate")
    for name, arch, arrays in cases:
        spec = spec_for(arch, args.epochs)
        bare, tuned, svc = [], [], []
        for _ in range(args.reps):  # interleaved; the best of each side (the least disturbed)
            bare.append(bare_rate(spec, arrays))
            tuned.append(bare_rate(spec, arrays, channels_last=True))
            svc.append(service_rate(spec, arrays))
        b, t, s = max(bare), max(tuned), max(svc)
        print(f"{name:20s} bare {b:8.1f} samples/s   service {s:8.1f} samples/s   "
              f"bare/service {b / s:5.3f}x  (target <= 1.10x)")
        print(f"{'':20s} bare channels-last {t:8.1f} samples/s   "
              f"bare-cl/service {t / s:5.3f}x  (info: the service's own work around the step)")
    if not args.skip_job:
        arrays = images(5000, 1, 28, seed=1)
        t0 = time.perf_counter()
        out = run_experiment(spec_for({"arch": "cnn"}, args.job_epochs), arrays=arrays)
        wall = time.perf_counter() - t0
        print(f"cnn job 28x28, 5000 samples, {args.job_epochs} epochs: wall {wall:.1f} s, "
              f"train {out.result['timing']['train_s']:.1f} s, "
              f"test accuracy {out.result['test']['accuracy']:.3f}")


if __name__ == "__main__":
    main()
