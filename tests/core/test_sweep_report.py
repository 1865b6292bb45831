"""The sweep comparison's arithmetic on hand-made trials: stats, ties, Pareto, bootstrap."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core.services.sweep_report import Trial, build_report, ece_interval, pareto_front


def result(acc: float, ece: float, val_nll: float, *, n: int = 200) -> dict[str, Any]:
    """A minimal result document: two reliability bins that give exactly `acc` and `ece`."""
    conf = acc + ece
    bins = [
        {"lo": 0.0, "hi": 0.5, "count": 0, "confidence": None, "accuracy": None},
        {"lo": 0.5, "hi": 1.0, "count": n, "confidence": conf, "accuracy": acc},
    ]
    history = [{"epoch": 1, "val_nll": val_nll + 1.0}, {"epoch": 2, "val_nll": val_nll}]
    return {
        "test": {"accuracy": acc, "ece": ece, "nll": 0.3, "reliability": bins},
        "temperature_scaled": {"temperature": 1.5, "test": {"ece": ece / 2, "nll": 0.25}},
        "history": history + [{"epoch": 3, "val_nll": val_nll + 5.0}],
        "best_epoch": 2,
    }


def trial(alpha: float, seed: int, res: dict[str, Any] | None, status: str = "succeeded") -> Trial:
    return Trial(f"job_{alpha}_{seed}", status, alpha, seed, {}, res)


def test_mean_std_recommendation_and_front() -> None:
    trials = [
        trial(0.0, 0, result(0.90, 0.10, 0.40)),
        trial(0.0, 1, result(0.92, 0.06, 0.40)),
        trial(0.1, 0, result(0.93, 0.04, 0.30)),
        trial(0.1, 1, result(0.95, 0.04, 0.30)),
        trial(0.2, 0, result(0.95, 0.09, 0.30)),  # ties α=0.1 on val_nll: the smaller α wins
        trial(0.2, 1, None, status="failed"),
    ]
    report = build_report(trials, objective="val_nll")
    rows = {r["alpha"]: r for r in report["rows"]}
    assert rows[0.0]["test"]["accuracy"]["mean"] == pytest.approx(0.91)
    assert rows[0.0]["test"]["accuracy"]["std"] == pytest.approx(np.std([0.90, 0.92], ddof=1))
    assert rows[0.2]["n_succeeded"] == 1 and rows[0.2]["test"]["ece"]["std"] is None
    assert rows[0.1]["val_best_epoch"]["val_nll"]["mean"] == pytest.approx(0.30)  # best epoch
    assert report["recommended"]["alpha"] == 0.1
    assert report["trials"] == {"total": 6, "succeeded": 5, "failed": 1}
    # (acc, ece): 0 → (0.91, 0.08), 0.1 → (0.94, 0.04), 0.2 → (0.95, 0.09): 0 is dominated.
    assert [p["alpha"] for p in report["pareto_front"]] == [0.1, 0.2]
    assert (
        report["recommended"]["alpha"]
        == build_report(trials, objective="val_nll")["recommended"]["alpha"]
    )


def test_maximized_objective_and_pareto_ties() -> None:
    rows = [
        {"test": {"accuracy": {"mean": 0.9}, "ece": {"mean": 0.05}}},
        {"test": {"accuracy": {"mean": 0.9}, "ece": {"mean": 0.05}}},  # equal points: both kept
        {"test": {"accuracy": {"mean": 0.8}, "ece": {"mean": 0.05}}},
    ]
    assert pareto_front(rows) == [0, 1]


def test_bootstrap_is_deterministic_and_brackets_the_ece() -> None:
    res = [result(0.8, 0.05, 0.1, n=400), result(0.82, 0.03, 0.1, n=400)]
    lo, hi = ece_interval(res)
    assert (lo, hi) == tuple(ece_interval(res))
    assert 0.0 <= lo < 0.04 < hi < 0.1
    assert (
        ece_interval([result(0.8, 0.05, 0.1, n=20)])[1]
        - ece_interval([result(0.8, 0.05, 0.1, n=2000)])[1]
        > 0
    )  # fewer test examples, wider interval
