"""The calibration-method side of a sweep report (issue 13), numpy only.

Per row: the training method and its swept parameter (α for label_smoothing, γ for focal and
FLSD-53, the margin m for margin, β for confidence_penalty), and per post-hoc method the
seed mean/std of its test metrics and of its cross-fitted validation score. The recommended
(training method, post-hoc method) pair is chosen on validation only: for "none" the
uncalibrated validation metric, for a calibrator its 2-fold cross-fitted validation metric
(fitted on one half of validation, scored on the other), never a test number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

POSTHOC_TEST_METRICS = ("accuracy", "nll", "ece", "smooth_ece")
PARAMETER_OF = {"label_smoothing": "alpha", "margin": "margin", "focal": "gamma",
                "focal_adaptive": "gamma", "confidence_penalty": "beta"}
# sweep objective -> the posthoc block's validation score of the same quantity
VAL_SCORE = {"val_nll": "nll", "val_ece": "ece", "val_accuracy": "accuracy"}

Summarize = Callable[[Sequence[float | None]], dict[str, float | None]]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) else None


def method_fields(results: Sequence[dict[str, Any]], summarize: Summarize) -> dict[str, Any]:
    """method, parameter and posthoc summaries of one row's succeeded trials."""
    loss = ((results[0].get("spec") or {}).get("loss") or {}) if results else {}
    method = str(loss.get("method", "label_smoothing"))
    name = PARAMETER_OF.get(method, "alpha")
    blocks = [r.get("posthoc") or {} for r in results]
    names = sorted({m for b in blocks for m in (b.get("methods") or {})})
    posthoc: dict[str, Any] = {}
    for m in names:
        docs = [(b.get("methods") or {}).get(m) or {} for b in blocks]
        if all("skipped" in d for d in docs):
            continue
        posthoc[m] = {
            "test": {k: summarize([_num((d.get("test") or {}).get(k)) for d in docs])
                     for k in POSTHOC_TEST_METRICS},
            "val_cv": {k: summarize([_num((d.get("val_cv") or {}).get(k)) for d in docs])
                       for k in VAL_SCORE.values()},
        }
    baseline = {k: summarize([_num((b.get("baseline_val") or {}).get(k)) for b in blocks])
                for k in VAL_SCORE.values()}
    return {"method": method, "parameter": {"name": name, "value": _num(loss.get(name))},
            "posthoc": posthoc, "baseline_val": baseline}


def recommend_pair(rows: Sequence[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    """The best (training method, post-hoc method) pair on validation scores, mean over seeds."""
    key = VAL_SCORE.get(objective, "nll")
    sign = -1.0 if key == "accuracy" else 1.0
    scored = []
    for r in rows:
        options = {"none": (r.get("baseline_val") or {}).get(key, {}).get("mean")}
        for m, doc in (r.get("posthoc") or {}).items():
            options[m] = doc["val_cv"][key]["mean"]
        for m, value in options.items():
            if value is not None:
                scored.append((sign * value, m, r))
    if not scored:
        return None
    _, posthoc, best = min(scored, key=lambda s: s[0])
    value = sign * min(s[0] for s in scored)
    return {
        "objective": objective,
        "score": f"validation {key}",
        "training": {"method": best.get("method"), "parameter": best.get("parameter"),
                     "alpha": best["alpha"], "context": best["context"]},
        "posthoc": posthoc,
        "value": value,
        "chosen_on": "validation only: uncalibrated validation metrics for 'none', 2-fold "
                     "cross-fitted validation metrics for each post-hoc calibrator",
    }
