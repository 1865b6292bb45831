"""The comparison of a finished sweep, from its trials' result documents (numpy only).

Per grid point (α × the other axes' values), over the seeds: the mean and standard deviation
(ddof=1; null for one seed) of every scalar test metric, of the temperature-scaled ECE/NLL and
T, and of the validation metrics at each trial's best epoch; a bootstrap 95 % interval of the
seed-mean test ECE; the recommended α (validation metrics only, never test); the Pareto front
of (mean test accuracy ↑, mean test ECE ↓).

The ECE bootstrap resamples test examples through the stored reliability bins (the result
document keeps no per-example predictions): per resample, bin counts ~ Multinomial(N, n_b/N)
and correct counts ~ Binomial(n_b*, acc_b), which is exactly what drawing N examples with
replacement does to the bins' counts and accuracies; each bin's mean confidence is held at
its observed value (its within-bin spread is at most one bin width). Each seed's trial is
resampled independently and the seed-mean ECE is taken per resample; percentile interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.catalog import SCALAR_TEST_METRICS
from core.services.method_report import method_fields, recommend_pair

TEST_METRICS = SCALAR_TEST_METRICS
SCALED_METRICS = ("ece", "nll", "accuracy")
VAL_METRICS = ("val_nll", "val_accuracy", "val_ece")
MAXIMIZE = {"val_accuracy"}
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95


@dataclass(frozen=True)
class Trial:
    """One trial as the report needs it: its grid point, status and result document."""

    job_id: str
    status: str
    alpha: float
    seed: int
    context: dict[str, Any]  # the values of the other axes, e.g. {"model.arch": "mlp"}
    result: dict[str, Any] | None


def context_slug(context: dict[str, Any]) -> str:
    """A file-name-safe label of an other-axes point, e.g. "model.arch-mlp" ("" for none)."""
    parts = [f"{name}-{value}" for name, value in sorted(context.items())]
    return "_".join(parts).replace("/", "-")


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(float(x)) else None


def summarize(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation (ddof=1) of the finite values; nulls when missing."""
    arr = np.array([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def best_epoch_row(result: dict[str, Any]) -> dict[str, Any]:
    """The history row of the epoch whose weights were evaluated (best_epoch, else the last)."""
    history = result.get("history") or []
    if not history:
        return {}
    best = result.get("best_epoch")
    for row in history:
        if row.get("epoch") == best:
            return dict(row)
    return dict(history[-1])


def _bins_arrays(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bins = (result.get("test") or {}).get("reliability") or []
    counts = np.array([int(b.get("count") or 0) for b in bins], dtype=np.int64)
    conf = np.array([_num(b.get("confidence")) or 0.0 for b in bins], dtype=float)
    acc = np.array([_num(b.get("accuracy")) or 0.0 for b in bins], dtype=float)
    return counts, conf, acc


def _bootstrap_ece(results: Sequence[dict[str, Any]], rng: np.random.Generator) -> np.ndarray:
    """Resampled seed-mean ECE values (BOOTSTRAP_RESAMPLES of them)."""
    per_seed = []
    for result in results:
        counts, conf, acc = _bins_arrays(result)
        n = int(counts.sum())
        if n == 0:
            continue
        draws = rng.multinomial(n, counts / n, size=BOOTSTRAP_RESAMPLES)
        correct = rng.binomial(draws, np.broadcast_to(acc, draws.shape))
        per_seed.append(np.abs(correct - draws * conf).sum(axis=1) / n)
    if not per_seed:
        return np.array([], dtype=float)
    return np.mean(per_seed, axis=0)


def ece_interval(results: Sequence[dict[str, Any]], seed: int = BOOTSTRAP_SEED) -> list[float]:
    """Percentile bootstrap 95 % interval [lo, hi] of the seed-mean test ECE (deterministic)."""
    samples = _bootstrap_ece(results, np.random.default_rng(seed))
    if samples.size == 0:
        return []
    tail = (1 - CI_LEVEL) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]


def pooled_bins(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seeds' reliability bins pooled: counts summed, confidence and accuracy count-weighted."""
    first = ((results[0].get("test") or {}).get("reliability") or []) if results else []
    pooled = []
    for i, template in enumerate(first):
        count, conf_sum, acc_sum = 0, 0.0, 0.0
        for result in results:
            b = result["test"]["reliability"][i]
            n = int(b.get("count") or 0)
            count += n
            conf_sum += n * (_num(b.get("confidence")) or 0.0)
            acc_sum += n * (_num(b.get("accuracy")) or 0.0)
        pooled.append(
            {
                "lo": template.get("lo"),
                "hi": template.get("hi"),
                "count": count,
                "confidence": conf_sum / count if count else None,
                "accuracy": acc_sum / count if count else None,
            }
        )
    return pooled


def _row(alpha: float, context: dict[str, Any], trials: list[Trial]) -> dict[str, Any]:
    done = [t for t in trials if t.status == "succeeded" and t.result]
    results = [t.result for t in done if t.result is not None]
    test = {
        m: summarize([_num((r.get("test") or {}).get(m)) for r in results]) for m in TEST_METRICS
    }
    scaled_docs = [r.get("temperature_scaled") or {} for r in results]
    scaled: dict[str, Any] = {
        "temperature": summarize([_num(s.get("temperature")) for s in scaled_docs])
    }
    for m in SCALED_METRICS:
        scaled[m] = summarize([_num((s.get("test") or {}).get(m)) for s in scaled_docs])
    val_rows = [best_epoch_row(r) for r in results]
    val = {m: summarize([_num(v.get(m)) for v in val_rows]) for m in VAL_METRICS}
    return {
        "alpha": alpha,
        "context": context,
        "n_trials": len(trials),
        "n_succeeded": len(done),
        "seeds": sorted(t.seed for t in done),
        "job_ids": [t.job_id for t in sorted(trials, key=lambda t: t.seed)],
        "test": test,
        "temperature_scaled": scaled,
        "val_best_epoch": val,
        "best_epoch": summarize([_num(r.get("best_epoch")) for r in results]),
        "ece_ci95": ece_interval(results),
        "reliability": pooled_bins(results),
        "pareto": False,
        **method_fields(results, summarize),
    }


def recommend(rows: Sequence[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    """The row with the best seed-mean best-epoch validation metric; ties go to the smaller α."""
    sign = -1.0 if objective in MAXIMIZE else 1.0
    scored = [
        (sign * r["val_best_epoch"][objective]["mean"], r["alpha"], r)
        for r in rows
        if r["val_best_epoch"][objective]["mean"] is not None
    ]
    if not scored:
        return None
    _, _, best = min(scored, key=lambda s: (s[0], s[1]))
    return {
        "alpha": best["alpha"],
        "context": best["context"],
        "value": best["val_best_epoch"][objective]["mean"],
    }


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of rows not dominated in (mean test accuracy ↑, mean test ECE ↓)."""
    points = [
        (i, r["test"]["accuracy"]["mean"], r["test"]["ece"]["mean"])
        for i, r in enumerate(rows)
        if r["test"]["accuracy"]["mean"] is not None and r["test"]["ece"]["mean"] is not None
    ]
    front = []
    for i, acc, ece in points:
        dominated = any(
            a >= acc and e <= ece and (a > acc or e < ece) for j, a, e in points if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: rows[i]["test"]["ece"]["mean"])


def _grid_rows(trials: Sequence[Trial]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One row per (context, α) grid point, sorted, and the contexts by their slug."""
    groups: dict[tuple[str, float], list[Trial]] = {}
    contexts: dict[str, dict[str, Any]] = {}
    for t in trials:
        slug = context_slug(t.context)
        contexts[slug] = t.context
        groups.setdefault((slug, t.alpha), []).append(t)
    rows = [
        _row(alpha, contexts[slug], members)
        for (slug, alpha), members in sorted(groups.items(), key=lambda kv: kv[0])
    ]
    return rows, contexts


def build_report(
    trials: Sequence[Trial], *, objective: str, target_accuracy: float = 0.9
) -> dict[str, Any]:
    """The sweep comparison (without plot links, which the caller adds)."""
    from core.services import curve_report  # it builds on this module
    rows, contexts = _grid_rows(trials)
    front = pareto_front(rows)
    for i in front:
        rows[i]["pareto"] = True
    by_context = []
    for slug in sorted(contexts):
        pick = recommend([r for r in rows if context_slug(r["context"]) == slug], objective)
        if pick is not None:
            by_context.append(pick)
    overall = recommend(rows, objective)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return {
        "objective": objective,
        "trials": {"total": len(trials), **counts},
        "metrics": {
            "test": list(TEST_METRICS),
            "temperature_scaled": ["temperature", *SCALED_METRICS],
            "val_best_epoch": list(VAL_METRICS),
        },
        "rows": rows,
        "recommended": None
        if overall is None
        else {
            "objective": objective,
            **overall,
            "chosen_on": "validation metrics at each trial's best epoch, mean over seeds",
            "by_context": by_context,
        },
        "recommended_pair": recommend_pair(rows, objective),
        "pareto_front": [
            {
                "alpha": rows[i]["alpha"],
                "context": rows[i]["context"],
                "accuracy": rows[i]["test"]["accuracy"]["mean"],
                "ece": rows[i]["test"]["ece"]["mean"],
            }
            for i in front
        ],
        "learning_curves": curve_report.learning_curves(trials, target_accuracy=target_accuracy),
        "shift": curve_report.shift_curves(trials),
        "bootstrap": {
            "statistic": "seed-mean test ECE",
            "method": "percentile bootstrap over test examples via the reliability bins "
            "(multinomial bin counts, binomial correct counts, bin confidence held fixed)",
            "resamples": BOOTSTRAP_RESAMPLES,
            "seed": BOOTSTRAP_SEED,
            "level": CI_LEVEL,
        },
    }


def plot_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the shape core.ml.plots.metric_vs_alpha_png reads (alpha, <m>_mean, <m>_std)."""
    out = []
    for r in rows:
        flat: dict[str, Any] = {"alpha": r["alpha"]}
        for m in ("accuracy", "ece", "nll"):
            flat[f"{m}_mean"] = r["test"][m]["mean"]
            flat[f"{m}_std"] = r["test"][m]["std"]
        out.append(flat)
    return out
