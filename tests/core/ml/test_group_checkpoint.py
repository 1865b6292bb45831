"""Group checkpoints (core.ml.group_checkpoint): a stacked group resumed from epoch k ends
exactly (bit for bit) like the same group trained without interruption."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from safetensors.torch import load as safetensors_load

from core.ml import group_checkpoint, plots
from core.ml.experiment import ExperimentOutput
from core.ml.sweep import TrialHooks, run_trials
from tests.core.ml.test_sweep import SPECS, close

KEYS = [f"job-{i}" for i in range(len(SPECS))]


@pytest.fixture(scope="module", autouse=True)
def _no_png_rendering() -> Iterator[None]:
    """Stub the matplotlib figures (equal on both paths: finish_experiment is shared)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "reliability_diagram_png", lambda *a, **k: b"png")
        mp.setattr(plots, "penultimate_projection_png", lambda *a, **k: b"png")
        yield


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[list[ExperimentOutput | None], dict[int, bytes]]:
    """The whole group trained in one go; the checkpoint it handed over after each epoch."""
    encoders: list[Callable[[], bytes]] = []
    outs = run_trials(SPECS, hooks=TrialHooks(checkpoint=encoders.append, trial_keys=KEYS))
    blobs = [enc() for enc in encoders]
    return outs, {group_checkpoint.decode(b)["meta"]["epoch"]: b for b in blobs}


def same(a: ExperimentOutput | None, b: ExperimentOutput | None) -> None:
    """Equal results (all but the timing) and equal artifacts (weights included), exactly."""
    assert a is not None and b is not None
    ra, rb = dict(a.result), dict(b.result)
    ra.pop("timing"), rb.pop("timing")
    assert ra == rb
    assert a.artifacts.keys() == b.artifacts.keys()
    for name in a.artifacts:
        assert a.artifacts[name] == b.artifacts[name], name


def test_checkpoints_every_epoch_but_the_last_and_trials_stop_apart(
    uninterrupted: tuple[list[ExperimentOutput | None], dict[int, bytes]],
) -> None:
    outs, blobs = uninterrupted
    last = max(len(o.result["history"]) for o in outs if o is not None)
    assert sorted(blobs) == list(range(1, last))  # the last epoch's state is the result
    meta = group_checkpoint.decode(blobs[2])["meta"]
    assert [t["key"] for t in meta["trials"]] == KEYS
    assert set(meta["active"]) <= set(KEYS)
    stops = {o.result["best_epoch"] for o in outs if o is not None}
    assert len(stops) > 1  # trials stop early at different epochs: a resume restores both kinds


@pytest.mark.parametrize("epoch", [1, 2, 3])
def test_resume_from_epoch_k_equals_the_uninterrupted_run(
    epoch: int, uninterrupted: tuple[list[ExperimentOutput | None], dict[int, bytes]]
) -> None:
    outs, blobs = uninterrupted
    resumed = run_trials(SPECS, hooks=TrialHooks(resume=blobs[epoch], trial_keys=KEYS))
    for a, b in zip(outs, resumed, strict=True):
        same(a, b)
        assert b is not None and b.result["timing"]["resumed_from_epoch"] == epoch
        assert len(b.result["history"]) == len(a.result["history"])  # epochs 1..k restored


def test_a_group_that_lost_trials_resumes_the_rest(
    uninterrupted: tuple[list[ExperimentOutput | None], dict[int, bytes]],
) -> None:
    outs, blobs = uninterrupted
    keep = [0, 2, 3, 5]  # two trials canceled while the worker was down
    resumed = run_trials([SPECS[i] for i in keep],
                         hooks=TrialHooks(resume=blobs[2], trial_keys=[KEYS[i] for i in keep]))
    for i, out in zip(keep, resumed, strict=True):
        # a smaller stack batches its matmuls differently (BLAS blocking): float tolerance,
        # as for stacked vs standalone (test_sweep.REL_TOL), not bit-equality
        ref = outs[i]
        assert out is not None and ref is not None
        close({**ref.result, "timing": None}, {**out.result, "timing": None})
        assert out.result["best_epoch"] == ref.result["best_epoch"]
        assert out is not None and out.result["timing"]["resumed_from_epoch"] == 2


def test_a_checkpoint_without_some_trial_or_unreadable_means_a_fresh_start(
    uninterrupted: tuple[list[ExperimentOutput | None], dict[int, bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    outs, blobs = uninterrupted
    others = ["job-0", "job-1", "job-2", "job-3", "job-4", "someone-else"]
    for blob, keys in ((blobs[2], others), (b"not a checkpoint", KEYS)):
        resumed = run_trials(SPECS, hooks=TrialHooks(resume=blob, trial_keys=keys))
        for a, b in zip(outs, resumed, strict=True):
            same(a, b)
            assert b is not None and b.result["timing"]["resumed_from_epoch"] is None
    assert "not in the checkpoint" in caplog.text and "start from epoch 1" in caplog.text


def test_the_checkpoint_is_pickle_free_safetensors(
    uninterrupted: tuple[list[ExperimentOutput | None], dict[int, bytes]],
) -> None:
    _, blobs = uninterrupted
    tensors = safetensors_load(blobs[1])
    assert any(k.startswith("param/") for k in tensors)
    assert any(k.startswith("optim/") for k in tensors)
    assert {k for k in tensors if k.startswith("order/")} == {"order/0", "order/1"}
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert b"pickle" not in blobs[1][:64] and blobs[1][8:9] == b"{"
