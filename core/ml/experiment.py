"""One experiment end to end: the function the Celery worker calls.

`run_experiment(spec)` loads and prepares the data, builds and trains the model, and
returns the result document's ML blocks (dataset, test, temperature_scaled, history,
best_epoch, stopped_early, projection, timing, environment) plus the model artifacts as
bytes; its figures are drawn from that document when first requested (`core.ml.figures`).
It touches no database or broker: progress, cancellation and checkpoints go through
`TrainHooks`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import save as safetensors_save
from torch import Tensor

from core.ml import calibration, posthoc
from core.ml.arch_compat import arch_incompatibility
from core.ml.data import (
    PreparedData,
    class_names_for,
    load_dataset,
    prepare_data,
    to_view,
    view_for_arch,
)
from core.ml.errors import SpecError
from core.ml.images import image_view, is_image_array, prepare_image_data, stored_layout
from core.ml.nets import build_model, model_config
from core.ml.predictions import predictions_npz
from core.ml.shifts import shift_block
from core.ml.train import FitResult, TrainConfig, TrainHooks, evaluate, fit
from core.ml.train_config import parse_job_spec
from core.spec import JobSpec

__all__ = [
    "ExperimentOutput",
    "PreparedExperiment",
    "TrainHooks",
    "finish_experiment",
    "json_safe",
    "prepare_experiment",
    "run_experiment",
]

MAX_PROJECTION_POINTS = 500


@dataclass
class ExperimentOutput:
    """The result document's ML part and the artifacts (name -> bytes)."""

    result: dict[str, Any]
    artifacts: dict[str, bytes] = field(default_factory=dict)


def json_safe(obj: Any) -> Any:
    """Recursively turn tensors/numpy into Python values and NaN/inf into None."""
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


def _projection(features: torch.Tensor, labels: torch.Tensor, templates: torch.Tensor,
                classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Project the penultimate activations (of samples of `classes`) onto their templates'
    plane."""
    _, coords = calibration.penultimate_projection(features, templates[classes])
    return coords.detach().cpu().numpy().astype(np.float64), labels.numpy()


@dataclass
class PreparedExperiment:
    """A resolved spec with its loaded, split and viewed data (what training and finishing need).

    `job` is `spec` read through the JobSpec model: every value, defaults included, comes
    from there, never from a lookup with a default of its own.
    """

    spec: dict[str, Any]
    job: JobSpec
    cfg: TrainConfig
    data: PreparedData
    names: list[str]
    mcfg: dict[str, Any]
    n_features: int
    image_shape: tuple[int, ...] | None
    Xtr: torch.Tensor
    ytr: torch.Tensor
    Xva: torch.Tensor
    yva: torch.Tensor
    Xte: torch.Tensor
    yte: torch.Tensor

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match besides the train config (model, data, split, noise)."""
        return {"model": self.mcfg, "sha256": self.data.sha256,
                "split": self.job.split.model_dump(mode="json"),
                "label_noise": self.job.label_noise}

    def build(self) -> torch.nn.Module:
        """Build the (unseeded) model of the spec; callers seed the global RNG first."""
        return build_model(self.job.model.model_dump(mode="json"), self.n_features,
                           self.data.n_classes, self.image_shape, self.cfg.variant,
                           self.mcfg.get("input_norm"))

    def with_spec(self, spec: dict[str, Any]) -> PreparedExperiment:
        """The same data under another spec that differs only in loss.alpha / training.seed."""
        job = parse_job_spec(spec)
        return replace(self, spec=spec, job=job, cfg=TrainConfig.from_job_spec(job))


def prepare_experiment(
    spec: dict[str, Any],
    *,
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
    class_names: list[str] | None = None,
) -> PreparedExperiment:
    """Validate the spec, load, split and standardise the data and make the arch's tensor view."""
    job = parse_job_spec(spec)
    cfg = TrainConfig.from_job_spec(job)
    ds_spec, split = job.dataset.model_dump(mode="json"), job.split
    model_spec = job.model.model_dump(mode="json")

    split_args: dict[str, Any] = {
        "val": split.val, "test": split.test, "split_seed": split.seed,
        "label_noise": job.label_noise, "train_fraction": split.train_fraction}
    raw_images = arrays is not None and is_image_array(np.asarray(arrays[0]))
    if raw_images and arrays is not None:  # uploaded images stay in their stored dtype
        X = np.asarray(arrays[0])
        data = prepare_image_data(X, np.asarray(arrays[1]), **split_args)
        image_shape: tuple[int, ...] | None = data.image_shape
        n_features = int(np.prod(X.shape[1:]))
    else:
        X, y, image_shape = load_dataset(ds_spec, arrays=arrays)
        data = prepare_data(X, y, image_shape, **split_args)
        n_features = int(X.shape[1])
    k = data.n_classes
    names = list(class_names) if class_names else class_names_for(ds_spec, k)
    if len(names) != k:
        names = [str(i) for i in range(k)]
    if cfg.prior is not None and len(cfg.prior) != k:
        raise SpecError(f"loss.prior has {len(cfg.prior)} entries but the dataset has {k} "
                        f"classes; give one probability per class")
    norm = {"mean": data.mean.tolist(), "std": data.std.tolist()} if raw_images else None
    mcfg = model_config(model_spec, n_features, k, image_shape, cfg.variant, norm)
    if raw_images:
        mcfg["stored"] = stored_layout(X)
    reason = arch_incompatibility(mcfg["arch"], n_features, image_shape)
    if reason:
        raise SpecError(reason)
    view = view_for_arch(mcfg["arch"])

    def tensors(Xs: np.ndarray, ys: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        viewed = (image_view(Xs, view, image_shape) if raw_images and image_shape
                  else to_view(Xs, view, image_shape))
        return torch.from_numpy(np.ascontiguousarray(viewed)), torch.from_numpy(ys)

    Xtr, ytr = tensors(data.X_train, data.y_train)
    Xva, yva = tensors(data.X_val, data.y_val)
    Xte, yte = tensors(data.X_test, data.y_test)
    return PreparedExperiment(spec=spec, job=job, cfg=cfg, data=data, names=names, mcfg=mcfg,
                              n_features=n_features, image_shape=image_shape,
                              Xtr=Xtr, ytr=ytr, Xva=Xva, yva=yva, Xte=Xte, yte=yte)


def run_experiment(
    spec: dict[str, Any],
    *,
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
    hooks: TrainHooks | None = None,
    class_names: list[str] | None = None,
) -> ExperimentOutput:
    """Train and evaluate one resolved job spec; deterministic for a given spec on CPU.

    `arrays` are the (X, y) of an uploaded dataset (spec dataset.source == "upload");
    `class_names` optionally names its classes. The caller's global torch RNG is left as it was.
    """
    prep = prepare_experiment(spec, arrays=arrays, class_names=class_names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(prep.cfg.seed)
        model = prep.build()
        fitted = fit(model, prep.Xtr, prep.ytr, prep.Xva, prep.yva, prep.cfg, hooks,
                     image_shape=prep.image_shape, fingerprint=prep.fingerprint)
    return finish_experiment(prep, model, fitted)


def finish_experiment(prep: PreparedExperiment, model: torch.nn.Module, fitted: FitResult
                      ) -> ExperimentOutput:
    """Evaluate the trained model and build the result document and artifacts."""
    cal, cfg, data = prep.job.calibration, prep.cfg, prep.data
    device = next(model.parameters()).device
    val_logits, val_labels, _ = evaluate(model, prep.Xva.to(device), prep.yva)
    classes = _projection_classes(prep)
    rows = None if classes is None else _projection_rows(prep.yte, classes)
    test_logits, test_labels, test_feats = evaluate(model, prep.Xte.to(device), prep.yte,
                                                    feature_rows=rows)
    test_report = calibration.calibration_report(
        torch.softmax(test_logits.double(), dim=1).float(), test_labels, cfg.n_bins,
        logits=test_logits, alpha=cfg.alpha)
    scaled = (_temperature_block(val_logits, val_labels, test_logits, test_labels, cfg)
              if cal.temperature_scaling else None)
    shift = shift_block(prep, model, scaled, val_logits, val_labels)  # None without shifts
    posthoc_block = posthoc.posthoc_report(
        list(cal.posthoc), val_logits, val_labels, test_logits,
        test_labels, n_bins=cfg.n_bins, alpha=cfg.alpha)
    # figures are drawn on request (core.ml.figures); the raw predictions are stored now
    artifacts = {"predictions.npz": predictions_npz(
        data, val_logits, val_labels, test_logits, test_labels),
        **_model_artifacts(prep, model, fitted)}
    result = {
        "dataset": _dataset_block(prep),
        "test": test_report,
        "temperature_scaled": scaled,
        "shift": shift,
        "posthoc": posthoc_block,
        "history": fitted.history,
        "best_epoch": fitted.best_epoch,
        "stopped_early": fitted.stopped_early,
        "projection": (None if classes is None or rows is None or test_feats is None else
                       _projection_block(prep, model, classes, test_feats, test_labels[rows])),
        "timing": {"train_s": round(fitted.train_s, 4),
                   "samples_per_s": round(fitted.samples_per_s, 1),
                   "resumed_from_epoch": fitted.resumed_from_epoch},
        "environment": {"device": fitted.device, "torch": torch.__version__},
    }
    return ExperimentOutput(result=json_safe(result), artifacts=artifacts)


def _temperature_block(val_logits: Tensor, val_labels: Tensor, test_logits: Tensor,
                       test_labels: Tensor, cfg: TrainConfig) -> dict[str, Any]:
    """`temperature_scaled`: T fitted on validation and the test report at that T."""
    T = float(calibration.fit_temperature(val_logits, val_labels))
    scaled_logits = test_logits / T
    return {"temperature": T, "test": calibration.calibration_report(
        torch.softmax(scaled_logits.double(), dim=1).float(), test_labels, cfg.n_bins,
        logits=scaled_logits, alpha=cfg.alpha)}


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
    """The test rows the projection shows: the first MAX_PROJECTION_POINTS of `classes`."""
    found = torch.isin(labels.cpu(), torch.tensor(classes)).nonzero().flatten()
    return found[:MAX_PROJECTION_POINTS]


def _projection_block(prep: PreparedExperiment, model: torch.nn.Module, classes: list[int],
                      feats: Tensor, labels: Tensor) -> dict[str, Any]:
    """The projection of the features of the projection's rows (labels: theirs)."""
    templates = cast(torch.nn.Linear, model.head).weight.detach().float().cpu()
    coords, labs = _projection(feats, labels, templates, classes)
    return {"classes": classes, "class_names": [prep.names[c] for c in classes],
            "points": [[round(float(a), 5), round(float(b), 5), int(c)]
                       for (a, b), c in zip(coords, labs, strict=True)]}


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
    """The result's `dataset` block: sizes, hash, classes and the stored layout."""
    data, image_shape = prep.data, prep.image_shape
    return {
        "n_train": len(data.y_train), "n_val": len(data.y_val), "n_test": len(data.y_test),
        "n_classes": data.n_classes, "n_features": prep.n_features, "sha256": data.sha256,
        "label_noise_changed": data.label_noise_changed, "class_names": prep.names,
        "image_shape": list(image_shape) if image_shape else None,
        **(prep.mcfg.get("stored") or {"layout": "NHW" if image_shape else "NF",
                                       "dtype": "float32", "channels": 1}),
    }
