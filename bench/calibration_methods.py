"""Issue 13: training-time methods × post-hoc calibrators, measured the same way.

CE (label smoothing α = 0), LS α = 0.05 and 0.1, margin (MbLS), focal (γ = 3) and FLSD-53 on
digits and a harder synthetic task, over seeds, each with and without every post-hoc method
(fitted on validation, reported on test). Prints mean ± std per cell and, at the end, which
statements held at every seed (only those belong in tests).

Usage: python bench/calibration_methods.py [--seeds 0 1 2] [--epochs 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ml.experiment import run_experiment  # noqa: E402
from core.spec import JobSpec  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {
    "CE": {"alpha": 0.0},
    "LS 0.05": {"alpha": 0.05},
    "LS 0.1": {"alpha": 0.1},
    "margin": {"method": "margin"},
    "focal 3": {"method": "focal"},
    "FLSD-53": {"method": "focal_adaptive"},
}
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"source": "builtin", "name": "digits"},
    "synthetic": {"source": "synthetic", "classes": 10, "features": 20, "samples": 3000,
                  "separation": 0.6, "seed": 0},
}
POSTHOC = ["temperature", "vector_scaling", "matrix_scaling", "histogram_binning", "isotonic"]


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f}±{sd:.3f}"


def run_cell(dataset: dict[str, Any], loss: dict[str, Any], seed: int, epochs: int
             ) -> dict[str, Any]:
    """One job's result document (training, then every post-hoc method)."""
    spec = JobSpec.model_validate({
        "dataset": dataset, "model": {"arch": "mlp", "hidden": [128]}, "loss": loss,
        "training": {"epochs": epochs, "seed": seed, "device": "cpu"},
        "calibration": {"posthoc": POSTHOC},
    }).resolved()
    return run_experiment(spec).result


def main(argv: list[str] | None = None) -> int:
    """Run the grid and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    facts: dict[str, list[bool]] = {}
    for dname, dataset in DATASETS.items():
        print(f"\n== {dname}: MLP [128], {args.epochs} epochs (early stopping val_nll), "
              f"seeds {args.seeds}; test metrics mean±std over seeds ==")
        head = " | ".join(f"{m[:9]:>11s}" for m in POSTHOC)
        print(f"{'method':8s} | {'acc':>11s} {'ECE':>11s} {'smECE':>11s} {'NLL':>11s} "
              f"{'overconf':>12s} || ECE after: {head}")
        for mname, loss in METHODS.items():
            results = [run_cell(dataset, loss, s, args.epochs) for s in args.seeds]
            test = [r["test"] for r in results]
            after = {m: [r["posthoc"]["methods"][m]["test"]["ece"] for r in results]
                     for m in POSTHOC}
            cols = " | ".join(f"{_ms(after[m]):>11s}" for m in POSTHOC)
            stats = " ".join(f"{_ms([t[k] for t in test]):>11s}"
                             for k in ("accuracy", "ece", "smooth_ece", "nll"))
            over = _ms([t["overconfidence"] for t in test])
            print(f"{mname:8s} | {stats} {over:>12s} || {cols}")
            facts[f"{dname} {mname}: underconfident (overconfidence < 0)"] = [
                t["overconfidence"] < 0 for t in test]
            facts[f"{dname} {mname}: temperature lowers ECE"] = [
                a < t["ece"] for a, t in zip(after["temperature"], test, strict=True)]
            facts[f"{dname} {mname}: isotonic lowers ECE"] = [
                a < t["ece"] for a, t in zip(after["isotonic"], test, strict=True)]
    print("\nheld at every seed:")
    for name, held in facts.items():
        if all(held):
            print(f"  yes  {name}")
    print("did not hold at every seed:")
    for name, held in facts.items():
        if not all(held):
            print(f"  no   {name}  ({sum(held)}/{len(held)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
