"""P3: an 8-alpha sweep trained stacked vs one job and vs 8 jobs one after another (digits, MLP).

Times `core.ml.sweep.run_trials` on 8 specs (alphas 0 .. 0.4, one seed) against
`core.ml.experiment.run_experiment` on one of them and on all 8 in turn, repetitions
interleaved, medians, printed as ratios (SPEC section 10, P3: sweep <= 2.5x one job). Two
settings: early stopping off (every trial runs all epochs: the fair timing) and the default
early stopping (val_nll, patience 5). Wall times are end to end (data, training, evaluation,
figures, artifacts); the training-only ratio (timing.train_s) is printed too. Then the
per-alpha table of the early-stopping sweep and the alpha with the lowest val_nll.

    .venv/bin/python -m bench.sweep              # 3 repetitions per setting
    .venv/bin/python -m bench.sweep --reps 1     # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from core.ml.experiment import ExperimentOutput, run_experiment
from core.ml.sweep import run_trials

ALPHAS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
ONE_JOB_ALPHA = 0.1


def trial_spec(alpha: float, *, epochs: int, early_stopping: bool, seed: int = 0
               ) -> dict[str, Any]:
    """The resolved default job spec (digits, MLP [256, 256]) at `alpha`, on the CPU."""
    from core.spec import JobSpec

    return JobSpec.model_validate({
        "dataset": {"source": "builtin", "name": "digits"},
        "model": {"arch": "mlp", "hidden": [256, 256]},
        "loss": {"alpha": alpha},
        "training": {"epochs": epochs, "seed": seed, "device": "cpu",
                     "early_stopping": {"metric": "val_nll", "patience": 5}
                     if early_stopping else None},
    }).resolved()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of fn() and its value."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def train_s(outputs: list[ExperimentOutput | None]) -> float:
    """Training seconds of outputs run one after another (stacked trials share one train_s)."""
    return sum(o.result["timing"]["train_s"] for o in outputs if o is not None)


def bench_setting(*, epochs: int, early_stopping: bool, reps: int
                  ) -> tuple[dict[str, float], list[ExperimentOutput | None]]:
    """Interleaved repetitions of one job, the stacked sweep and 8 jobs in turn; medians."""
    specs = [trial_spec(a, epochs=epochs, early_stopping=early_stopping) for a in ALPHAS]
    one = specs[ALPHAS.index(ONE_JOB_ALPHA)]
    run_experiment(trial_spec(0.1, epochs=1, early_stopping=False))  # warm-up: imports, fonts
    walls: dict[str, list[float]] = {"one": [], "sweep": [], "seq": []}
    trains: dict[str, list[float]] = {"one": [], "sweep": [], "seq": []}
    outputs: list[ExperimentOutput | None] = []
    for _ in range(reps):
        t, out = timed(lambda: run_experiment(one))
        walls["one"].append(t)
        trains["one"].append(out.result["timing"]["train_s"])
        t, outputs = timed(lambda: run_trials(specs))
        walls["sweep"].append(t)
        trains["sweep"].append(outputs[0].result["timing"]["train_s"] if outputs[0] else 0.0)
        t, seq = timed(lambda: [run_experiment(s) for s in specs])
        walls["seq"].append(t)
        trains["seq"].append(train_s(seq))
    med = {f"{k}_wall": statistics.median(v) for k, v in walls.items()}
    med |= {f"{k}_train": statistics.median(v) for k, v in trains.items()}
    return med, outputs


def print_timing(name: str, m: dict[str, float], reps: int) -> None:
    """The medians and the ratios of one setting."""
    print(f"\n== {name} (median of {reps}) ==")
    print(f"{'':22s}{'wall s':>9s}{'train s':>9s}{'wall / one':>12s}{'train / one':>13s}")
    for key, label in (("one", "one job (alpha 0.1)"), ("sweep", "8-alpha sweep stacked"),
                       ("seq", "8 jobs in turn")):
        print(f"{label:22s}{m[key + '_wall']:9.2f}{m[key + '_train']:9.2f}"
              f"{m[key + '_wall'] / m['one_wall']:11.2f}x"
              f"{m[key + '_train'] / m['one_train']:12.2f}x")
    print(f"P3 sweep / one job: {m['sweep_wall'] / m['one_wall']:.2f}x (target <= 2.5x); "
          f"sweep / 8 in turn: {m['sweep_wall'] / m['seq_wall']:.2f}x")


def print_table(outputs: list[ExperimentOutput | None]) -> None:
    """Per-alpha metrics of the sweep and the recommended alpha (lowest val_nll)."""
    print(f"\n{'alpha':>6s}{'best ep':>8s}{'val_nll':>9s}{'test acc':>9s}{'test ECE':>9s}"
          f"{'test NLL':>9s}{'T':>7s}{'ECE@T':>8s}")
    best: tuple[float, float] | None = None
    for alpha, out in zip(ALPHAS, outputs, strict=True):
        if out is None:
            continue
        r = out.result
        val_nll = r["history"][r["best_epoch"] - 1]["val_nll"]
        ts = r["temperature_scaled"] or {"temperature": float("nan"), "test": {"ece": None}}
        print(f"{alpha:6.2f}{r['best_epoch']:8d}{val_nll:9.4f}{r['test']['accuracy']:9.4f}"
              f"{r['test']['ece']:9.4f}{r['test']['nll']:9.4f}{ts['temperature']:7.3f}"
              f"{ts['test']['ece'] or float('nan'):8.4f}")
        if best is None or val_nll < best[1]:
            best = (alpha, val_nll)
    if best is not None:
        print(f"recommended alpha (lowest val_nll at the selected epoch): {best[0]:g} "
              f"(val_nll {best[1]:.4f})")


def main() -> None:
    """Run both settings and print ratios, the per-alpha table and the recommended alpha."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; digits, MLP "
          f"[256, 256], {args.epochs} epochs, alphas {list(ALPHAS)}, seed 0")
    fair, _ = bench_setting(epochs=args.epochs, early_stopping=False, reps=args.reps)
    print_timing("early stopping off: every trial runs all epochs", fair, args.reps)
    default, outputs = bench_setting(epochs=args.epochs, early_stopping=True, reps=args.reps)
    print_timing("default early stopping (val_nll, patience 5)", default, args.reps)
    print_table(outputs)


if __name__ == "__main__":
    main()
