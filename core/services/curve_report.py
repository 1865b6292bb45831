"""Learning curves and calibration under shift, from a sweep's trials (numpy only; issue 16).

Learning curves (sweeps with a `split.train_fraction` axis): per other-axes point (e.g. the
architecture) and α, the seed mean and standard deviation of test accuracy, NLL and ECE at
each training-set size (`dataset.n_train` of the trials). Per curve, the smallest training
size whose seed-mean accuracy reaches the sweep's `target_accuracy`; and, when `model.arch`
is an axis, the accuracy and ECE of each architecture at the smallest and the largest
fraction with the gap (largest minus smallest value) between architectures.

Shift curves (trials whose results carry a `shift` block): per other-axes point, α and
perturbation, the seed mean/std of accuracy, NLL and ECE against intensity (0 = the clean
test split), before and after temperature scaling (the plot of Ovadia et al. 2019, Fig. 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from core.services.sweep_report import Trial, context_slug, summarize

FRACTION, ARCH = "split.train_fraction", "model.arch"
CURVE_METRICS = ("accuracy", "nll", "ece")
METHODS = ("before", "after")  # without / with temperature scaling


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(float(x)) else None


def _done(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    return [t.result for t in trials if t.status == "succeeded" and t.result is not None]


def _rest(context: dict[str, Any], *drop: str) -> dict[str, Any]:
    return {k: v for k, v in context.items() if k not in drop}


def _point(fraction: float, trials: list[Trial]) -> dict[str, Any]:
    results = _done(trials)
    sizes = summarize([_num((r.get("dataset") or {}).get("n_train")) for r in results])
    point: dict[str, Any] = {"train_fraction": fraction, "n_train": sizes["mean"]}
    for m in CURVE_METRICS:
        point[m] = summarize([_num((r.get("test") or {}).get(m)) for r in results])
    return point


def _curves(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, float], dict[float, list[Trial]]] = {}
    contexts: dict[str, dict[str, Any]] = {}
    for t in trials:
        rest = _rest(t.context, FRACTION)
        contexts[context_slug(rest)] = rest
        by_fraction = groups.setdefault((context_slug(rest), t.alpha), {})
        by_fraction.setdefault(float(t.context[FRACTION]), []).append(t)
    curves = []
    for (slug, alpha), by_fraction in sorted(groups.items()):
        points = [_point(f, ts) for f, ts in sorted(by_fraction.items())]
        curves.append({"context": contexts[slug], "alpha": alpha,
                       "points": [p for p in points if p["n_train"] is not None]})
    return curves


def _smallest(curve: dict[str, Any], target: float) -> dict[str, Any]:
    reached = [p for p in curve["points"] if (p["accuracy"]["mean"] or 0.0) >= target]
    first = min(reached, key=lambda p: p["n_train"]) if reached else None
    return {"context": curve["context"], "alpha": curve["alpha"], "target_accuracy": target,
            "n_train": first["n_train"] if first else None,
            "train_fraction": first["train_fraction"] if first else None,
            "accuracy": first["accuracy"]["mean"] if first else None}


def _gap(curves: list[dict[str, Any]], alpha: float, rest: dict[str, Any], which: str
         ) -> dict[str, Any] | None:
    """Per architecture accuracy/ECE at the smallest or largest fraction, and the spread."""
    members = [c for c in curves if c["alpha"] == alpha and _rest(c["context"], ARCH) == rest
               and c["points"]]
    if len(members) < 2:
        return None
    fractions = sorted({p["train_fraction"] for c in members for p in c["points"]})
    fraction = fractions[0] if which == "smallest" else fractions[-1]
    by_arch: dict[str, dict[str, Any]] = {}
    for c in members:
        for p in c["points"]:
            if p["train_fraction"] == fraction and p["accuracy"]["mean"] is not None:
                by_arch[str(c["context"][ARCH])] = {
                    "n_train": p["n_train"], "accuracy": p["accuracy"]["mean"],
                    "ece": p["ece"]["mean"]}
    if len(by_arch) < 2:
        return None
    acc = {a: v["accuracy"] for a, v in by_arch.items()}
    ece = {a: v["ece"] for a, v in by_arch.items() if v["ece"] is not None}
    return {"alpha": alpha, "context": rest, "size": which, "train_fraction": fraction,
            "by_arch": by_arch, "most_accurate": max(acc, key=lambda a: acc[a]),
            "accuracy_gap": max(acc.values()) - min(acc.values()),
            "best_calibrated": min(ece, key=lambda a: ece[a]) if ece else None,
            "ece_gap": max(ece.values()) - min(ece.values()) if ece else None}


def learning_curves(trials: Sequence[Trial], *, target_accuracy: float) -> dict[str, Any] | None:
    """The learning-curve block of a sweep report, or None without a train_fraction axis."""
    if not trials or not all(FRACTION in t.context for t in trials):
        return None
    curves = _curves(trials)
    gaps = []
    if all(ARCH in t.context for t in trials):
        rests = {context_slug(_rest(c["context"], ARCH)): _rest(c["context"], ARCH)
                 for c in curves}
        for alpha in sorted({c["alpha"] for c in curves}):
            for slug in sorted(rests):
                for which in ("smallest", "largest"):
                    gap = _gap(curves, alpha, rests[slug], which)
                    if gap is not None:
                        gaps.append(gap)
    return {"x": "n_train", "metrics": list(CURVE_METRICS), "spread": "std over seeds (ddof=1)",
            "target_accuracy": target_accuracy, "curves": curves,
            "smallest_size": [_smallest(c, target_accuracy) for c in curves],
            "arch_gaps": gaps}


def _shift_rows(result: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """{perturbation: {intensity: {"before": metrics, "after": metrics}}}, intensity 0 = clean."""
    block = result.get("shift") or {}
    clean = block.get("clean")
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for p in block.get("perturbations") or []:
        rows = {0: clean} if clean else {}
        rows.update({int(r["intensity"]): r for r in p.get("intensities") or []})
        out[str(p["name"])] = rows
    return out


def shift_curves(trials: Sequence[Trial]) -> list[dict[str, Any]] | None:
    """Metrics against shift intensity per other-axes point, α and perturbation, or None."""
    groups: dict[tuple[str, float, str], list[dict[int, dict[str, Any]]]] = {}
    contexts: dict[str, dict[str, Any]] = {}
    for t in trials:
        if t.status != "succeeded" or not t.result:
            continue
        for name, rows in _shift_rows(t.result).items():
            contexts[context_slug(t.context)] = t.context
            groups.setdefault((context_slug(t.context), t.alpha, name), []).append(rows)
    if not groups:
        return None
    out = []
    for (slug, alpha, name), per_seed in sorted(groups.items()):
        intensities = sorted({i for rows in per_seed for i in rows})
        points = []
        for i in intensities:
            point: dict[str, Any] = {"intensity": i}
            for method in METHODS:
                docs = [(rows.get(i) or {}).get(method) or {} for rows in per_seed]
                point[method] = {m: summarize([_num(d.get(m)) for d in docs])
                                 for m in CURVE_METRICS}
            points.append(point)
        out.append({"context": contexts[slug], "alpha": alpha, "shift": name,
                    "methods": {"before": "no temperature scaling",
                                "after": "temperature scaled (T fitted on clean validation)"},
                    "points": points})
    return out
