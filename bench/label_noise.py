"""Label smoothing under label noise: digits, noisy training labels, MLP, alpha x seeds.

Seed 000 and Lukasik et al. (2020) say smoothing helps when training labels are noisy.
This script trains every (alpha, seed) pair with `core.ml.experiment.run_experiment`
(the function a worker calls) and prints mean and spread of test accuracy and ECE per
alpha. Seed s sets both the split seed (which also seeds the label noise) and the
training seed, so the spread covers different noisy label draws too.

    .venv/bin/python -m bench.label_noise                       # the full experiment
    .venv/bin/python -m bench.label_noise --epochs 5 --seeds 2  # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

DEFAULT_ALPHAS = (0.0, 0.1, 0.2)


def trial_spec(
    *,
    alpha: float,
    seed: int,
    noise: float,
    epochs: int,
    hidden: list[int],
    early_stopping: bool,
) -> dict[str, Any]:
    """The resolved job spec of one trial (digits, MLP, CPU)."""
    from core.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "dataset": {"source": "builtin", "name": "digits"},
            "label_noise": noise,
            "split": {"seed": seed},
            "model": {"arch": "mlp", "hidden": hidden},
            "loss": {"alpha": alpha},
            "training": {
                "epochs": epochs,
                "seed": seed,
                "device": "cpu",
                "early_stopping": {} if early_stopping else None,
            },
            "calibration": {"temperature_scaling": True},
        }
    )
    return spec.resolved()


def run_grid(
    *,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    seeds: int = 3,
    noise: float = 0.3,
    epochs: int = 30,
    hidden: tuple[int, ...] = (256, 256),
    early_stopping: bool = True,
) -> list[dict[str, Any]]:
    """Train every (alpha, seed) trial; one row per trial with its test metrics."""
    from core.ml.experiment import run_experiment

    rows = []
    for alpha in alphas:
        for seed in range(seeds):
            spec = trial_spec(
                alpha=alpha,
                seed=seed,
                noise=noise,
                epochs=epochs,
                hidden=list(hidden),
                early_stopping=early_stopping,
            )
            t0 = time.perf_counter()
            result = run_experiment(spec).result
            test = result["test"]
            rows.append(
                {
                    "alpha": alpha,
                    "seed": seed,
                    "accuracy": test["accuracy"],
                    "ece": test["ece"],
                    "nll": test["nll"],
                    "mean_confidence": test["mean_confidence"],
                    "ece_ts": result["temperature_scaled"]["test"]["ece"],
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of accuracy, ECE and NLL, per alpha."""
    out = []
    for alpha in sorted({r["alpha"] for r in rows}):
        group = [r for r in rows if r["alpha"] == alpha]
        entry: dict[str, Any] = {"alpha": alpha, "n": len(group)}
        for metric in ("accuracy", "ece", "nll", "mean_confidence", "ece_ts"):
            values = [float(r[metric]) for r in group]
            entry[f"{metric}_mean"] = statistics.fmean(values)
            entry[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The per-alpha summary as a Markdown table."""
    lines = [
        "| alpha | seeds | test accuracy (mean ± sd) | test ECE (mean ± sd) "
        "| test NLL (mean ± sd) | mean confidence | ECE after temperature scaling |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['alpha']:g} | {s['n']} | {s['accuracy_mean']:.4f} ± {s['accuracy_sd']:.4f} "
            f"| {s['ece_mean']:.4f} ± {s['ece_sd']:.4f} | {s['nll_mean']:.4f} ± {s['nll_sd']:.4f} "
            f"| {s['mean_confidence_mean']:.4f} | {s['ece_ts_mean']:.4f} ± {s['ece_ts_sd']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the grid and print the per-trial rows (JSON) and the summary table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument(
        "--no-early-stopping", action="store_true", help="train all epochs, keep the last"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run_grid(
        alphas=tuple(args.alphas),
        seeds=args.seeds,
        noise=args.noise,
        epochs=args.epochs,
        hidden=tuple(args.hidden),
        early_stopping=not args.no_early_stopping,
    )
    for row in rows:
        print(json.dumps(row))
    es = "off" if args.no_early_stopping else "val_nll, patience 5"
    print(
        f"\ndigits, label noise {args.noise:g}, MLP {args.hidden}, {args.epochs} epochs max, "
        f"early stopping {es}, AdamW lr 1e-3, {time.perf_counter() - t0:.0f} s\n"
    )
    print(markdown_table(summarize(rows)))


if __name__ == "__main__":
    main()
