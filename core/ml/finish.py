"""After training: evaluate the models and build each result document and its artifacts.

`finish_trials(preps, models, fitteds)` finishes the trials of one stack (specs that differ
only in loss.alpha and training.seed, so one data split, n_bins and calibration spec) together:
every model is evaluated on its own (the logits a standalone job computes), then the metrics
of all trials are computed at once — the test and temperature-scaled reports in one
`stacked_metrics.calibration_reports` call, the temperatures in one search, the post-hoc block
through `stacked_posthoc` — and give, trial by trial, the numbers the single-trial functions
give (tests/core/ml/test_stacked_metrics.py). A single job is the stack of one
(`finish_experiment`). Shifts, projection and artifacts stay per trial. torch runs on one
intra-op thread meanwhile (`_one_thread`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from safetensors.torch import save as safetensors_save
from torch import Tensor

from core.ml import calibration
from core.ml.errors import SpecError
from core.ml.predictions import predictions_npz
from core.ml.shifts import shift_block
from core.ml.stacked_metrics import calibration_reports
from core.ml.stacked_posthoc import posthoc_reports
from core.ml.temperature import fit_temperatures
from core.ml.train import FitResult, evaluate

if TYPE_CHECKING:
    from core.ml.experiment import PreparedExperiment

__all__ = ["ExperimentOutput", "finish_experiment", "finish_trials", "json_safe"]

MAX_PROJECTION_POINTS = 500


@dataclass
class ExperimentOutput:
    """The result document's ML part and the artifacts (name -> bytes)."""

    result: dict[str, Any]
    artifacts: dict[str, bytes] = field(default_factory=dict)


def json_safe(obj: Any) -> Any:
    """Recursively turn tensors/numpy into Python values and NaN/inf into None."""
    kind = type(obj)  # exact types first: a result document is thousands of plain floats
    if kind is float:
        return obj if math.isfinite(obj) else None
    if kind is int or kind is str or kind is bool or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist() if obj.ndim else obj.item())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def finish_experiment(prep: PreparedExperiment, model: torch.nn.Module, fitted: FitResult
                      ) -> ExperimentOutput:
    """Evaluate the trained model and build the result document and artifacts."""
    return finish_trials([prep], [model], [fitted])[0]


def _reports(test_logits: Tensor, labels: Tensor, temps: list[float] | None,
             preps: list[PreparedExperiment]) -> tuple[list[dict], list[dict] | None]:
    """Every trial's `test` report and, with temperatures, its `temperature_scaled` block."""
    n_bins, alphas = preps[0].cfg.n_bins, [p.cfg.alpha for p in preps]
    logits = [test_logits]
    if temps is not None:  # test_logits / T in float32, as one trial's tensor / float gives it
        logits.append(test_logits / torch.tensor(temps, dtype=torch.float32).view(-1, 1, 1))
    stacked = torch.cat(logits)
    reports = calibration_reports(torch.softmax(stacked.double(), dim=2).float(), labels,
                                  n_bins, logits=stacked, alphas=alphas * len(logits))
    t = len(preps)
    scaled = (None if temps is None else
              [{"temperature": temp, "test": rep} for temp, rep in zip(temps, reports[t:],
                                                                     strict=True)])
    return reports[:t], scaled


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one intra-op thread meanwhile (the previous count restored after).

    The finish is hundreds of small tensor ops; an OpenMP fork/join per op gains nothing
    there and, when the other cores are busy, waits for a scheduler slice each time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def finish_trials(preps: list[PreparedExperiment], models: list[torch.nn.Module],
                  fitteds: list[FitResult]) -> list[ExperimentOutput]:
    """Evaluate the trained models of one stack and build each trial's document and artifacts."""
    with _one_thread():
        return _finish_trials(preps, models, fitteds)


def _finish_trials(preps: list[PreparedExperiment], models: list[torch.nn.Module],
                   fitteds: list[FitResult]) -> list[ExperimentOutput]:
    """finish_trials' work."""
    p0 = preps[0]
    cal, n_bins = p0.job.calibration, p0.cfg.n_bins
    device = next(models[0].parameters()).device
    classes = _projection_classes(p0)
    rows = None if classes is None else _projection_rows(p0.yte, classes)
    evals = [(evaluate(m, p0.Xva.to(device), p0.yva),
              evaluate(m, p0.Xte.to(device), p0.yte, feature_rows=rows)) for m in models]
    val_labels, test_labels = evals[0][0][1], evals[0][1][1]
    val_logits = torch.stack([v[0] for v, _ in evals])
    test_logits = torch.stack([t[0] for _, t in evals])
    temps = fit_temperatures(val_logits, val_labels) if cal.temperature_scaling else None
    tests, scaled = _reports(test_logits, test_labels, temps, preps)
    posthoc_blocks = posthoc_reports(
        list(cal.posthoc), val_logits, val_labels, test_logits, test_labels, n_bins=n_bins,
        alphas=[p.cfg.alpha for p in preps], temperatures=temps,
        temperature_tests=None if scaled is None else [b["test"] for b in scaled])
    outputs = []
    for i, (prep, model, fitted) in enumerate(zip(preps, models, fitteds, strict=True)):
        block = scaled[i] if scaled is not None else None
        shift = shift_block(prep, model, block, val_logits[i], val_labels)  # None w/o shifts
        # figures are drawn on request (core.ml.figures); the raw predictions are stored now
        artifacts = {"predictions.npz": predictions_npz(
            prep.data, val_logits[i], val_labels, test_logits[i], test_labels),
            **_model_artifacts(prep, model, fitted)}
        result = {
            "dataset": _dataset_block(prep), "test": tests[i], "temperature_scaled": block,
            "shift": shift, "posthoc": posthoc_blocks[i], "history": fitted.history,
            "best_epoch": fitted.best_epoch, "stopped_early": fitted.stopped_early,
            "projection": _projection_block(prep, model, classes, rows, evals[i][1][2],
                                            test_labels),
            "timing": {"train_s": round(fitted.train_s, 4),
                       "samples_per_s": round(fitted.samples_per_s, 1),
                       "resumed_from_epoch": fitted.resumed_from_epoch},
            "environment": {"device": fitted.device, "torch": torch.__version__},
        }
        outputs.append(ExperimentOutput(result=json_safe(result), artifacts=artifacts))
    return outputs


def _projection_classes(prep: PreparedExperiment) -> list[int] | None:
    """The three classes of the penultimate-layer projection (None for binary or K < 3)."""
    k = prep.data.n_classes
    if k < 3 or prep.cfg.variant == "binary":
        return None
    classes = [int(c) for c in (prep.job.calibration.projection_classes or [0, 1, 2])]
    if len(classes) != 3 or len(set(classes)) != 3 or not all(0 <= c < k for c in classes):
        raise SpecError(f"calibration.projection_classes={classes} must be 3 distinct class "
                        f"ids in 0..{k - 1}")
    return classes


def _projection_rows(labels: Tensor, classes: list[int]) -> Tensor:
    """The test rows the projection shows: the first MAX_PROJECTION_POINTS of `classes`.

    Only their features are kept by `evaluate` (all of them would be an (N, D) float copy of
    the input for a linear model).
    """
    found = torch.isin(labels.cpu(), torch.tensor(classes)).nonzero().flatten()
    return found[:MAX_PROJECTION_POINTS]


def _projection_block(prep: PreparedExperiment, model: torch.nn.Module,
                      classes: list[int] | None, rows: Tensor | None, feats: Tensor | None,
                      test_labels: Tensor) -> dict[str, Any] | None:
    """The projection of the projection rows' features onto their classes' templates' plane."""
    if classes is None or rows is None or feats is None:
        return None
    templates = cast(torch.nn.Linear, model.head).weight.detach().float().cpu()
    _, coords = calibration.penultimate_projection(feats, templates[classes])
    points = coords.detach().cpu().numpy().astype(np.float64)
    labs = test_labels[rows].numpy()
    return {"classes": classes, "class_names": [prep.names[c] for c in classes],
            "points": [[round(float(a), 5), round(float(b), 5), int(c)]
                       for (a, b), c in zip(points, labs, strict=True)]}


def _model_artifacts(prep: PreparedExperiment, model: torch.nn.Module, fitted: FitResult
                     ) -> dict[str, bytes]:
    """model.safetensors (one metadata key: stable bytes) and model.json."""
    data, mcfg = prep.data, prep.mcfg
    state = {k_: v.detach().cpu().contiguous() for k_, v in model.state_dict().items()}
    model_doc = {"model": mcfg, "class_names": prep.names,
                 "standardize": {"mean": data.mean.tolist(), "std": data.std.tolist()},
                 "loss": prep.job.loss.model_dump(mode="json"), "best_epoch": fitted.best_epoch}
    return {"model.safetensors": safetensors_save(
                state, metadata={"model_config": json.dumps(mcfg, sort_keys=True)}),
            "model.json": json.dumps(json_safe(model_doc), indent=1).encode()}


def _dataset_block(prep: PreparedExperiment) -> dict[str, Any]:
    """The result's `dataset` block: sizes, hash, classes, the layout as uploaded and stored."""
    data, image_shape = prep.data, prep.image_shape
    return {
        "n_train": len(data.y_train), "n_val": len(data.y_val), "n_test": len(data.y_test),
        "n_classes": data.n_classes, "n_features": prep.n_features, "sha256": data.sha256,
        "label_noise_changed": data.label_noise_changed, "class_names": prep.names,
        "image_shape": list(image_shape) if image_shape else None,
        "uploaded_layout": prep.uploaded_layout,
        **(prep.mcfg.get("stored") or {"layout": "NHW" if image_shape else "NF",
                                       "dtype": "float32", "channels": 1}),
    }
