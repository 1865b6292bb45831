"""One experiment end to end: the function the Celery worker calls.

`run_experiment(spec)` loads and prepares the data, builds and trains the model, and
returns the result document's ML blocks (dataset, test, temperature_scaled, history,
best_epoch, stopped_early, projection, timing, environment) plus the model artifacts as
bytes; its figures are drawn from that document when first requested (`core.ml.figures`).
It touches no database or broker: progress, cancellation and checkpoints go through
`TrainHooks`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

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
from core.ml.finish import ExperimentOutput, finish_experiment, json_safe
from core.ml.images import image_view, is_image_array, prepare_image_data, stored_layout
from core.ml.nets import build_model, model_config
from core.ml.train import TrainConfig, TrainHooks, fit
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
    uploaded_layout: str | None = None  # an upload's layout as sent (NHWC, NCHW, NHW, NF, table)

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
    uploaded_layout: str | None = None,
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
                              Xtr=Xtr, ytr=ytr, Xva=Xva, yva=yva, Xte=Xte, yte=yte,
                              uploaded_layout=uploaded_layout)


def run_experiment(
    spec: dict[str, Any],
    *,
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
    hooks: TrainHooks | None = None,
    class_names: list[str] | None = None,
    uploaded_layout: str | None = None,
) -> ExperimentOutput:
    """Train and evaluate one resolved job spec; deterministic for a given spec on CPU.

    `arrays` are the (X, y) of an uploaded dataset (spec dataset.source == "upload");
    `class_names` optionally names its classes, `uploaded_layout` says how X was laid out as
    sent. The caller's global torch RNG is left as it was.
    """
    prep = prepare_experiment(spec, arrays=arrays, class_names=class_names,
                              uploaded_layout=uploaded_layout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(prep.cfg.seed)
        model = prep.build()
        fitted = fit(model, prep.Xtr, prep.ytr, prep.Xva, prep.yva, prep.cfg, hooks,
                     image_shape=prep.image_shape, fingerprint=prep.fingerprint)
    return finish_experiment(prep, model, fitted)
