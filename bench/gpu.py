"""Benchmark (issue 12 item 5): the GPU path. NOT RUN YET: no GPU was lent to the session that
wrote it; run it on a CUDA machine and paste its lines.

Usage: python bench/gpu.py [--n N] [--epochs E]

* resnet-20 and resnet-56 on a CIFAR-shaped synthetic set (uint8 (N, 3, 32, 32), 10 classes):
  samples/s and peak GPU memory of the service's loop (`core.ml.train.fit`, device auto: CUDA,
  bf16 autocast, channels-last, pinned + non-blocking copies, uint8 batches normalised on the
  device) against a bare PyTorch loop of the same model (bf16 autocast, channels-last,
  F.cross_entropy(label_smoothing=)); ratio bare/service (target <= 1.10x).
* the fused label-smoothed loss (core.ml.losses) against F.cross_entropy(label_smoothing=)
  on CUDA, forward + backward, at (2048, 32000) and (65536, 10).
* a stacked 8-alpha sweep (core.ml.sweep.run_trials) against one job, on digits with an MLP
  (BatchNorm nets fall back to running trials one by one).
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

from core.ml import losses  # noqa: E402
from core.ml.experiment import prepare_experiment, run_experiment  # noqa: E402
from core.ml.placement import prepare_model_for  # noqa: E402
from core.ml.sweep import run_trials  # noqa: E402
from core.ml.train import fit  # noqa: E402


def cifar_like(n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images, 10 learnable classes."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    X = rng.integers(0, 100, size=(n, 3, 32, 32)).astype(np.uint8)
    for k in range(10):
        X[y == k, k % 3, (k * 3):(k * 3) + 3] += 120
    return X, y


def spec(depth: int, epochs: int) -> dict:
    """A resnet job spec on the uploaded set, the papers' optimiser, no early stopping."""
    return {"dataset": {"source": "upload", "id": "bench"},
            "model": {"arch": "resnet", "depth": depth},
            "optimizer": {"name": "sgd", "lr": 0.1, "nesterov": True, "weight_decay": 5e-4},
            "training": {"epochs": epochs, "batch_size": 128, "device": "cuda", "augment": True,
                         "early_stopping": None}}


def service(depth: int, epochs: int, arrays: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(samples/s, peak GiB) of core.ml.train.fit."""
    prep = prepare_experiment(spec(depth, epochs), arrays=arrays)
    torch.manual_seed(0)
    model = prep.build()
    torch.cuda.reset_peak_memory_stats()
    res = fit(model, prep.Xtr, prep.ytr, prep.Xva, prep.yva, prep.cfg,
              image_shape=prep.image_shape, fingerprint=prep.fingerprint)
    return res.samples_per_s, torch.cuda.max_memory_allocated() / 2**30


def bare(depth: int, epochs: int, arrays: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(samples/s, peak GiB) of a plain bf16 channels-last loop on the same model and data."""
    prep = prepare_experiment(spec(depth, epochs), arrays=arrays)
    torch.manual_seed(0)
    model = prep.build()
    dev = torch.device("cuda")
    prepare_model_for(model, dev)
    X, y = prep.Xtr.to(dev), prep.ytr.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(X), device=dev)
        for start in range(0, len(X), 128):
            idx = perm[start:start + 128]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(X[idx])
            loss = F.cross_entropy(out.float(), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    torch.cuda.synchronize()
    return len(X) * epochs / (time.perf_counter() - t0), torch.cuda.max_memory_allocated() / 2**30


def loss_timing(n: int, k: int, reps: int = 20) -> tuple[float, float]:
    """ms per forward+backward: ours, F.cross_entropy(label_smoothing=0.1)."""
    logits = torch.randn(n, k, device="cuda", requires_grad=True)
    target = torch.randint(0, k, (n,), device="cuda")
    out = []
    for fn in (lambda: losses.label_smoothed_cross_entropy(logits, target, 0.1),
               lambda: F.cross_entropy(logits, target, label_smoothing=0.1)):
        fn().backward()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn().backward()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / reps * 1e3)
    return out[0], out[1]


def main() -> None:
    """Print every measurement."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: bench/gpu.py measures the GPU path only")
        return
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    arrays = cifar_like(args.n)
    for depth in (20, 56):
        b, bm = bare(depth, args.epochs, arrays)
        s, sm = service(depth, args.epochs, arrays)
        print(f"resnet-{depth}: bare {b:9.0f} samples/s {bm:5.2f} GiB | service {s:9.0f} "
              f"samples/s {sm:5.2f} GiB | bare/service {b / s:5.3f}x (target <= 1.10x)")
    for n, k in ((2048, 32000), (65536, 10)):
        ours, ref = loss_timing(n, k)
        print(f"loss {n}x{k}: ours {ours:7.3f} ms  F.cross_entropy {ref:7.3f} ms  "
              f"ratio {ours / ref:5.3f}x")
    base = {"model": {"arch": "mlp", "hidden": [256, 256]},
            "training": {"epochs": 30, "device": "cuda", "early_stopping": None}}
    t0 = time.perf_counter()
    run_experiment({**base, "loss": {"alpha": 0.1}})
    one = time.perf_counter() - t0
    alphas = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4]
    t0 = time.perf_counter()
    run_trials([{**base, "loss": {"alpha": a}} for a in alphas])
    stacked = time.perf_counter() - t0
    print(f"digits mlp: one job {one:.2f} s | stacked 8-alpha sweep {stacked:.2f} s = "
          f"{stacked / one:.2f}x one job")


if __name__ == "__main__":
    main()
