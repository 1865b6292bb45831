"""Stacked trials (core.ml.sweep): equal to standalone jobs, per-trial early stopping, hooks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from core.ml import plots
from core.ml.errors import TrainingStopped
from core.ml.experiment import ExperimentOutput, run_experiment
from core.ml.sweep import TrialHooks, run_trials, stack_key

ALPHAS, SEEDS = (0.0, 0.1, 0.3), (0, 1)
# Stacked vs standalone differ only by float rounding (batched vs unbatched matmuls, the
# stacked loss and fused optimiser). Measured max relative differences (CPU, float32):
# test nll/brier/ece <= 5.6e-7; every other summary metric, history value and the
# temperature <= 1.7e-6; per-bin mean confidence <= 3.1e-6; accuracy and best epochs
# identical. Tolerances sit a little above that.
HEADLINE_TOL = 2e-6
REL_TOL = 1e-5


def spec(alpha: float, seed: int, **training: Any) -> dict[str, Any]:
    """A small digits MLP whose trials stop early at different epochs (lr 0.02, patience 1)."""
    tr = {"epochs": 10, "seed": seed, "device": "cpu",
          "early_stopping": {"metric": "val_nll", "patience": 1}, **training}
    return {"dataset": {"source": "builtin", "name": "digits"},
            "model": {"arch": "mlp", "hidden": [32], "dropout": 0.0},
            "loss": {"alpha": alpha, "variant": "uniform"},
            "optimizer": {"name": "adamw", "lr": 0.02, "weight_decay": 0.0},
            "training": tr, "calibration": {"n_bins": 15, "temperature_scaling": True},
            "tags": {"alpha": str(alpha)}, "webhook_url": None}


SPECS = [spec(a, s) for s in SEEDS for a in ALPHAS]


@pytest.fixture(scope="module", autouse=True)
def _no_png_rendering() -> Iterator[None]:
    """Stub the matplotlib figures (most of the runtime); both paths share finish_experiment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "reliability_diagram_png", lambda *a, **k: b"png")
        mp.setattr(plots, "penultimate_projection_png", lambda *a, **k: b"png")
        yield


@pytest.fixture(scope="module")
def standalone() -> list[ExperimentOutput]:
    """Every trial run as its own job."""
    return [run_experiment(s) for s in SPECS]


@pytest.fixture(scope="module")
def stacked() -> tuple[list[ExperimentOutput | None], list[tuple[int, dict]]]:
    """All trials trained together, with the on_epoch calls they made."""
    rows: list[tuple[int, dict]] = []
    outs = run_trials(SPECS, hooks=TrialHooks(on_epoch=lambda i, r: rows.append((i, r))))
    return outs, rows


def close(a: Any, b: Any, path: str = "") -> None:
    """Recursively compare two result values: numbers within REL_TOL, the rest equal."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        # a post-hoc fit (L-BFGS, isotonic steps) turns ~1e-9 logit differences into ~1e-5
        # in what follows from it (measured up to 4.5e-5 relative)
        tol = 1e-3 if path.startswith(".posthoc") else REL_TOL
        assert math.isclose(a, b, rel_tol=tol, abs_tol=1e-9), f"{path}: {a} vs {b}"
    else:
        assert a == b, path


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """The result without timing and the projection points (coordinates compared loosely)."""
    return {k: v for k, v in result.items() if k not in ("timing", "projection")}


def test_each_trial_equals_its_standalone_job(stacked: Any, standalone: Any) -> None:
    outs, _ = stacked
    for out, ref in zip(outs, standalone, strict=True):
        assert out is not None
        a, b = out.result, ref.result
        assert set(a) == set(b)
        assert set(out.artifacts) == set(ref.artifacts) == {
            "model.safetensors", "model.json", "predictions.npz"}
        assert a["test"]["accuracy"] == b["test"]["accuracy"]
        assert a["best_epoch"] == b["best_epoch"]
        assert a["stopped_early"] == b["stopped_early"]
        for metric in ("nll", "brier", "ece"):
            assert math.isclose(a["test"][metric], b["test"][metric], rel_tol=HEADLINE_TOL)
        close(comparable(a), comparable(b))
        assert a["projection"]["classes"] == b["projection"]["classes"]
        for p, q in zip(a["projection"]["points"], b["projection"]["points"], strict=True):
            assert p[2] == q[2] and abs(p[0] - q[0]) < 1e-3 and abs(p[1] - q[1]) < 1e-3


def test_trials_stop_early_at_their_own_epochs(stacked: Any, standalone: Any) -> None:
    outs, rows = stacked
    lengths = [len(o.result["history"]) for o in outs]
    assert len(set(lengths)) >= 3  # the masking is exercised: trials stop at different epochs
    assert any(o.result["stopped_early"] for o in outs)
    assert not all(o.result["stopped_early"] for o in outs)
    for i, out in enumerate(outs):  # on_epoch: once per trial per epoch it trained
        assert [r for j, r in rows if j == i] == out.result["history"]


def test_canceled_trial_is_none_and_others_unaffected(stacked: Any) -> None:
    outs, _ = stacked
    seen: list[int] = []

    def canceled(i: int) -> bool:
        seen.append(i)
        return i == 1 and seen.count(1) >= 2  # canceled before its second epoch

    specs = SPECS[:3]
    got = run_trials(specs, hooks=TrialHooks(trial_canceled=canceled))
    assert got[1] is None
    for i in (0, 2):
        out = got[i]
        assert out is not None
        assert out.result["test"]["accuracy"] == outs[i].result["test"]["accuracy"]
        close(comparable(out.result), comparable(outs[i].result))


def test_should_stop_stops_the_group() -> None:
    calls = []

    def should_stop() -> str | None:
        calls.append(1)
        return "canceled" if len(calls) >= 3 else None

    with pytest.raises(TrainingStopped) as err:
        run_trials(SPECS[:2], hooks=TrialHooks(should_stop=should_stop))
    assert err.value.reason == "canceled"
    assert len(calls) == 3  # polled between batches


def test_mismatched_stack_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="stack_key"):
        run_trials([spec(0.1, 0), spec(0.1, 0, epochs=3)])
    assert run_trials([]) == []


def test_stack_key_ignores_alpha_seed_tags_and_webhook() -> None:
    a, b = spec(0.0, 0), spec(0.3, 7)
    b["tags"], b["webhook_url"] = {"x": "y"}, "https://example.com/hook"
    assert stack_key(a) == stack_key(b)
    assert stack_key(a) != stack_key(spec(0.0, 0, batch_size=64))
    assert "alpha" not in stack_key(a) and '"seed"' not in stack_key(a).split('"split"')[0]
    assert a["loss"]["alpha"] == 0.0 and a["tags"]  # the spec itself is left alone


def test_dropout_trials_run_one_after_another_and_equal_standalone() -> None:
    specs = [spec(a, 0, epochs=2) for a in (0.0, 0.2)]
    for s in specs:
        s["model"]["dropout"] = 0.2
    outs = run_trials(specs)
    for out, s in zip(outs, specs, strict=True):
        assert out is not None
        ref = run_experiment(s)
        assert comparable(out.result) == comparable(ref.result)  # same code path: bit-equal
