"""TrainConfig: the plain, JSON-safe values the training loop reads, taken from a JobSpec.

The defaults are the JobSpec model's own (read from a default JobSpec, never restated here),
so `TrainConfig()` and `TrainConfig.from_spec({})` agree with the spec by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from core.ml import methods
from core.ml.errors import SpecError
from core.spec import JobSpec

__all__ = ["TrainConfig", "parse_job_spec"]

_SPEC = JobSpec()  # the spec's defaults, read by name below
_TRAINING, _OPTIMIZER, _LOSS = _SPEC.training, _SPEC.optimizer, _SPEC.loss
_EARLY = _TRAINING.early_stopping
_SCHEDULE = _TRAINING.schedule


@dataclass
class TrainConfig:
    """Everything the loop needs besides the model and the data (plain values, JSON-safe)."""

    epochs: int = _TRAINING.epochs
    batch_size: int = _TRAINING.batch_size
    seed: int = _TRAINING.seed
    device: str = _TRAINING.device
    augment: bool = _TRAINING.augment
    optimizer: str = _OPTIMIZER.name
    lr: float = _OPTIMIZER.lr
    weight_decay: float = _OPTIMIZER.weight_decay
    momentum: float = _OPTIMIZER.momentum
    nesterov: bool = _OPTIMIZER.nesterov
    schedule: str = _SCHEDULE.name
    milestones: list[int] = field(default_factory=lambda: list(_SCHEDULE.milestones))
    gamma: float = _SCHEDULE.gamma
    warmup_epochs: int = _SCHEDULE.warmup_epochs
    crop_padding: int | None = _TRAINING.crop_padding
    flip: bool | None = _TRAINING.flip
    alpha: float = _LOSS.alpha
    variant: str = _LOSS.variant
    prior: list[float] | None = None
    form: str = _LOSS.form
    method: str = _LOSS.method
    method_params: dict[str, float] = field(default_factory=dict)
    early_stopping_metric: str | None = _EARLY.metric if _EARLY else None
    patience: int = _EARLY.patience if _EARLY else 0
    n_bins: int = _SPEC.calibration.n_bins
    eval_batch_size: int = 2048  # not part of the spec: rows per evaluation forward pass

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TrainConfig:
        """Read a (resolved) job spec dict through the JobSpec model: its defaults, its checks."""
        return cls.from_job_spec(parse_job_spec(spec))

    @classmethod
    def from_job_spec(cls, job: JobSpec) -> TrainConfig:
        """The training, optimizer, loss and calibration blocks of a validated JobSpec."""
        tr, opt, loss, es = job.training, job.optimizer, job.loss, job.training.early_stopping
        return cls(
            epochs=tr.epochs, batch_size=tr.batch_size, seed=tr.seed, device=tr.device,
            augment=tr.augment, optimizer=opt.name, lr=opt.lr, weight_decay=opt.weight_decay,
            momentum=opt.momentum, alpha=loss.alpha, variant=loss.variant,
            prior=None if loss.prior is None else [float(p) for p in loss.prior],
            form=loss.form, early_stopping_metric=es.metric if es else None,
            patience=es.patience if es else 0, n_bins=job.calibration.n_bins,
            method=loss.method, method_params=methods.params_from_spec(loss.model_dump()),
            nesterov=opt.nesterov, schedule=tr.schedule.name,
            milestones=list(tr.schedule.milestones), gamma=tr.schedule.gamma,
            warmup_epochs=tr.schedule.warmup_epochs, crop_padding=tr.crop_padding, flip=tr.flip,
        )


def parse_job_spec(spec: dict[str, Any]) -> JobSpec:
    """The JobSpec of a spec dict; SpecError naming the first field that is wrong."""
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"{where}: {first['msg']}") from exc
