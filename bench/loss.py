"""Benchmark (SPEC §10 P1): fused label-smoothed CE vs torch and vs the dense soft-target loss.

Usage: python bench/loss.py [--quick] [--reps N] [--threads T] [--alpha A]

For each (N, K) in (2048, 32000), (8192, 1000), (65536, 10) (P1) and the training batch shapes
(64, 10), (128, 100), (256, 1000), (512, 32000) (issue 11: <= 1.0x torch) it times forward +
backward of

* ours  -- core.ml.losses.label_smoothed_cross_entropy (fused autograd.Function),
* torch -- F.cross_entropy(z, y, label_smoothing=alpha),
* dense -- q = full((N, K), alpha/K); q.scatter_(1, y, 1 - alpha + alpha/K);
           loss = -(q * log_softmax(z)).sum(1).mean(),

interleaved: every repetition runs all three, in a rotating order, and the table reports
medians (for small shapes one sample is the mean of up to 200 calls in a row).  The logits
are a leaf tensor whose .grad is reset before each run, so every run pays
for its gradient buffer.

Peak extra memory (CPU) is measured with torch.profiler(profile_memory=True): the allocator's
[memory] events (+bytes on alloc, -bytes on free) of one separate forward + backward are summed
in time order, and the maximum of that running sum is the peak extra allocation above what
existed before the call (the logits themselves are not counted; the gradient that ends up in
logits.grad is).  It is reported in units of one logits buffer (N * K * element size).  On CUDA
torch.cuda.max_memory_allocated() minus the memory allocated before the call is used instead.
Timings are not taken under the profiler.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.ml.losses import label_smoothed_cross_entropy  # noqa: E402

P1_SHAPES = [(2048, 32000), (8192, 1000), (65536, 10)]
# The batch shapes jobs actually train with (issue 11 item 7: <= 1.0x torch at every one).
TRAINING_SHAPES = [(64, 10), (128, 100), (256, 1000), (512, 32000)]
SHAPES = P1_SHAPES + TRAINING_SHAPES
_SMALL_ELEMS = 1 << 20  # below this many logits one timing sample repeats the call
LossFn = Callable[[Tensor, Tensor, float], Tensor]


def ours(z: Tensor, y: Tensor, alpha: float) -> Tensor:
    """The fused loss under test."""
    return label_smoothed_cross_entropy(z, y, alpha)


def torch_ce(z: Tensor, y: Tensor, alpha: float) -> Tensor:
    """torch's built-in label smoothing."""
    return F.cross_entropy(z, y, label_smoothing=alpha)


def dense(z: Tensor, y: Tensor, alpha: float) -> Tensor:
    """The usual hand-written soft-target implementation."""
    k = z.shape[1]
    q = torch.full_like(z, alpha / k)
    q.scatter_(1, y.unsqueeze(1), 1.0 - alpha + alpha / k)
    return -(q * torch.log_softmax(z, dim=1)).sum(1).mean()


IMPLS: dict[str, LossFn] = {"ours": ours, "torch": torch_ce, "dense": dense}


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(fn: LossFn, z: Tensor, y: Tensor, alpha: float, inner: int = 1
             ) -> tuple[float, Tensor, Tensor]:
    """Forward + backward (`inner` times in a row); return (seconds per call, loss, grad)."""
    _sync(z.device)
    t0 = time.perf_counter()
    for _ in range(inner):
        z.grad = None
        loss = fn(z, y, alpha)
        loss.backward()
    _sync(z.device)
    elapsed = (time.perf_counter() - t0) / inner
    grad = z.grad
    assert grad is not None
    return elapsed, loss.detach(), grad


def peak_extra_bytes(fn: LossFn, z: Tensor, y: Tensor, alpha: float) -> int:
    """Peak bytes allocated above the starting point during one forward + backward."""
    z.grad = None
    if z.device.type == "cuda":
        _sync(z.device)
        torch.cuda.reset_peak_memory_stats(z.device)
        base = torch.cuda.memory_allocated(z.device)
        fn(z, y, alpha).backward()
        _sync(z.device)
        return torch.cuda.max_memory_allocated(z.device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(z, y, alpha).backward()
    events = [e for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def bench_shape(n: int, k: int, reps: int, alpha: float, device: torch.device) -> dict:
    """Interleaved timings, peak memory and value differences for one (N, K)."""
    gen = torch.Generator().manual_seed(n + k)
    z = torch.randn(n, k, generator=gen).to(device).requires_grad_()
    y = torch.randint(0, k, (n,), generator=gen).to(device)
    names = list(IMPLS)
    times: dict[str, list[float]] = {name: [] for name in names}
    results = {}
    inner = max(1, min(200, _SMALL_ELEMS // (n * k)))
    for name in names:  # warm-up, and the values/gradients to compare
        _, loss, grad = run_once(IMPLS[name], z, y, alpha)
        results[name] = (loss, grad.clone())
    for rep in range(reps):
        for i in range(len(names)):
            name = names[(rep + i) % len(names)]
            times[name].append(run_once(IMPLS[name], z, y, alpha, inner)[0])
    med = {name: statistics.median(ts) for name, ts in times.items()}
    logits_bytes = z.numel() * z.element_size()
    mem = {name: peak_extra_bytes(IMPLS[name], z, y, alpha) / logits_bytes for name in names}
    ref_loss, ref_grad = results["torch"]
    our_loss, our_grad = results["ours"]
    return {
        "shape": (n, k), "med": med, "mem": mem,
        "val_rel": float((our_loss - ref_loss).abs() / ref_loss.abs()),
        "dense_val_rel": float((results["dense"][0] - ref_loss).abs() / ref_loss.abs()),
        "grad_rel": float((our_grad - ref_grad).abs().max() / ref_grad.abs().max()),
    }


def print_table(rows: list[dict], device: torch.device, reps: int) -> None:
    """Print the P1 table."""
    print(f"\ndevice={device}  threads={torch.get_num_threads()}  reps={reps}  "
          f"torch={torch.__version__}  (times: median ms of forward+backward)")
    head = (f"{'N x K':>13} | {'ours ms':>8} {'torch ms':>9} {'dense ms':>9} | "
            f"{'ours/torch':>10} {'ours/dense':>10} | {'mem ours':>8} {'torch':>6} "
            f"{'dense':>6} | {'val rel':>8} {'grad rel':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        n, k = r["shape"]
        med, mem = r["med"], r["mem"]
        print(f"{n:>6} x {k:<5} | {med['ours'] * 1e3:8.2f} {med['torch'] * 1e3:9.2f} "
              f"{med['dense'] * 1e3:9.2f} | {med['ours'] / med['torch']:10.3f} "
              f"{med['ours'] / med['dense']:10.3f} | {mem['ours']:8.2f} {mem['torch']:6.2f} "
              f"{mem['dense']:6.2f} | {r['val_rel']:8.1e} {r['grad_rel']:8.1e}")
    print("memory: peak extra allocation during forward+backward, in logits buffers "
          "(gradient included)")


def check_targets(rows: list[dict]) -> list[str]:
    """The SPEC §10 P1 targets, as PASS/FAIL lines."""
    lines = []
    limits = {(2048, 32000): 0.7, (65536, 10): 0.5}
    limits |= {shape: 1.0 for shape in TRAINING_SHAPES}
    for r in rows:
        ratio = r["med"]["ours"] / r["med"]["torch"]
        if r["shape"] in limits:
            ok = ratio <= limits[r["shape"]]
            lines.append(f"{'PASS' if ok else 'FAIL'} time {r['shape']}: {ratio:.3f} "
                         f"<= {limits[r['shape']]}")
        if r["shape"] in P1_SHAPES:  # small batches take torch's kernels (3 buffers of KiBs)
            ok = r["mem"]["ours"] <= 1.2
            lines.append(f"{'PASS' if ok else 'FAIL'} memory {r['shape']}: "
                         f"{r['mem']['ours']:.2f} <= 1.2")
        ok = r["val_rel"] <= 1e-5
        lines.append(f"{'PASS' if ok else 'FAIL'} value {r['shape']}: rel {r['val_rel']:.1e} "
                     "<= 1e-5")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark on CPU (and CUDA when present)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of --reps")
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--alpha", type=float, default=0.1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else args.reps
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        rows = [bench_shape(n, k, reps, args.alpha, device) for n, k in SHAPES]
        print_table(rows, device, reps)
        if device.type == "cpu":
            print("\n".join(check_targets(rows)))


if __name__ == "__main__":
    main()
