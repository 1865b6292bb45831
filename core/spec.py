"""The job spec (v1): the contract between the API and the workers."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The vocabularies of the spec, each written once; the tuples (and core.catalog) derive from them.
BuiltinName = Literal["digits", "iris", "wine", "breast_cancer"]
Arch = Literal["linear", "mlp", "cnn", "gru", "transformer", "resnet"]
Variant = Literal["uniform", "off_target", "prior", "binary"]
Form = Literal["ce", "kl"]
OptimizerName = Literal["sgd", "adam", "adamw"]
ValMetric = Literal["val_nll", "val_ece", "val_accuracy"]  # early stopping and sweep objective
Device = Literal["auto", "cpu", "cuda"]

BUILTIN_NAMES: tuple[str, ...] = get_args(BuiltinName)
ARCHS: tuple[str, ...] = get_args(Arch)
VARIANTS: tuple[str, ...] = get_args(Variant)
FORMS: tuple[str, ...] = get_args(Form)
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
EARLY_STOPPING_METRICS: tuple[str, ...] = get_args(ValMetric)
DEVICES: tuple[str, ...] = get_args(Device)
RESNET_DEPTHS = (20, 32, 44, 56, 110)
SCHEDULES = ("constant", "step", "cosine")
DEFAULT_HIDDEN = {"cnn": [32, 64, 128]}  # every other arch: [256, 256]


class Strict(BaseModel):
    """Base of every request model: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class BuiltinDataset(Strict):
    """A scikit-learn bundled dataset."""

    source: Literal["builtin"] = "builtin"
    name: BuiltinName = "digits"


class SyntheticDataset(Strict):
    """A seeded synthetic classification problem."""

    source: Literal["synthetic"]
    classes: int = Field(default=3, ge=2, le=100)
    features: int = Field(default=20, ge=2, le=1000)
    samples: int = Field(default=1000, ge=30, le=200_000)
    separation: float = Field(default=1.0, gt=0, le=100)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class UploadDataset(Strict):
    """A dataset uploaded through POST /v1/datasets."""

    source: Literal["upload"]
    id: str = Field(min_length=1, max_length=64)


DatasetSpec = Annotated[
    BuiltinDataset | SyntheticDataset | UploadDataset, Field(discriminator="source")
]


class SplitSpec(Strict):
    """Stratified train/validation/test split."""

    val: float = Field(default=0.15, gt=0, lt=0.5)
    test: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class ModelSpec(Strict):
    """The architecture; `hidden` is read per architecture (see the catalog)."""

    arch: Arch = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [256, 256], max_length=8
    )
    dropout: float = Field(default=0.0, ge=0, lt=1)
    depth: Literal[20, 32, 44, 56, 110] | None = Field(
        default=None, description="resnet only: 6n+2 layers (default 20)"
    )

    @model_validator(mode="after")
    def _check_hidden(self) -> ModelSpec:
        if "hidden" not in self.model_fields_set and self.arch in DEFAULT_HIDDEN:
            self.hidden = list(DEFAULT_HIDDEN[self.arch])
        if self.arch == "resnet" and self.depth is None:
            self.depth = 20
        if self.arch != "resnet" and self.depth is not None:
            raise ValueError(f"model.depth is only used by arch 'resnet', not {self.arch!r}")
        if self.arch != "linear" and not self.hidden:
            raise ValueError(f"model.hidden must name at least one width for arch {self.arch!r}")
        if self.arch == "transformer" and self.hidden and self.hidden[0] % 4 != 0:
            raise ValueError(
                f"model.hidden[0] is the transformer width and must be divisible by 4 "
                f"(4 attention heads), but got {self.hidden[0]}"
            )
        return self


class LossSpec(Strict):
    """The label-smoothed loss: α, the smoothing variant and the form."""

    alpha: float = Field(default=0.1, ge=0, lt=1)
    variant: Variant = "uniform"
    prior: list[Annotated[float, Field(ge=0)]] | None = Field(default=None, max_length=1000)
    form: Form = "ce"

    @model_validator(mode="after")
    def _check_prior(self) -> LossSpec:
        if self.variant == "prior":
            if not self.prior:
                raise ValueError("loss.prior is required when loss.variant is 'prior'")
            total = math.fsum(self.prior)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"loss.prior must sum to 1, but sums to {total:.6g}")
        elif self.prior is not None:
            raise ValueError("loss.prior is only allowed with loss.variant 'prior'")
        return self


class OptimizerSpec(Strict):
    """Optimiser and its hyper-parameters."""

    name: OptimizerName = "adamw"
    lr: float = Field(default=0.001, gt=0, le=10)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = Field(default=False, description="sgd only: Nesterov momentum")

    @model_validator(mode="after")
    def _check_nesterov(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("optimizer.nesterov needs name 'sgd' and a momentum > 0")
        return self


class EarlyStoppingSpec(Strict):
    """Stop when a validation metric has not improved for `patience` epochs."""

    metric: ValMetric = "val_nll"
    patience: int = Field(default=5, ge=1, le=1000)


class ScheduleSpec(Strict):
    """Learning-rate schedule, stepped every batch; optional linear warmup."""

    name: Literal["constant", "step", "cosine"] = "constant"
    milestones: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=list, max_length=16, description="step: epochs at which lr *= gamma"
    )
    gamma: float = Field(default=0.1, gt=0, le=1)
    warmup_epochs: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _check_milestones(self) -> ScheduleSpec:
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"schedule.milestones must be increasing, but got {self.milestones}")
        if self.name == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs at least one epoch in schedule.milestones")
        if self.name != "step" and self.milestones:
            raise ValueError("schedule.milestones is only used by schedule 'step'")
        return self


class TrainingSpec(Strict):
    """The training loop."""

    epochs: int = Field(default=30, ge=1, le=1000)
    batch_size: int = Field(default=128, ge=1, le=65536)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    device: Device = "auto"
    augment: bool = False
    crop_padding: int | None = Field(
        default=None, ge=0, le=16,
        description="augment: random-crop padding (default 4, 1 for images under 16 px)")
    flip: bool | None = Field(
        default=None, description="augment: horizontal flips (default on for colour images)")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    early_stopping: EarlyStoppingSpec | None = Field(default_factory=EarlyStoppingSpec)


class CalibrationSpec(Strict):
    """How calibration is measured."""

    n_bins: int = Field(default=15, ge=1, le=1000)
    temperature_scaling: bool = True
    projection_classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, min_length=3, max_length=3
    )


class JobSpec(Strict):
    """A complete job spec; every omitted field takes the documented default."""

    dataset: DatasetSpec = Field(default_factory=BuiltinDataset)
    label_noise: float = Field(default=0.0, ge=0, lt=1)
    split: SplitSpec = Field(default_factory=SplitSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    tags: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=32
    )
    webhook_url: str | None = Field(default=None, max_length=2000)

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return value

    def resolved(self) -> dict[str, Any]:
        """The fully resolved spec as a JSON-ready dict."""
        return self.model_dump(mode="json")


EXAMPLE_SPEC: dict[str, Any] = {
    "dataset": {"source": "builtin", "name": "digits"},
    "model": {"arch": "mlp", "hidden": [128]},
    "loss": {"alpha": 0.1},
    "training": {"epochs": 20},
    "tags": {"team": "vision"},
}


# --- Sweeps (issue 6) ---------------------------------------------------------------------

# Fields that may differ between trials trained together as one stacked model.
STACK_FREE_FIELDS = (("loss", "alpha"), ("training", "seed"), ("tags",), ("webhook_url",))


def _distinct(values: list[Any], name: str) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, but got {values}")
    return values


class SweepAxes(Strict):
    """Further grid axes besides α and the seed; each value obeys the job spec's rules."""

    label_noise: list[Annotated[float, Field(ge=0, lt=1)]] | None = Field(
        default=None, min_length=1, max_length=16
    )
    model_arch: list[Arch] | None = Field(
        default=None, alias="model.arch", min_length=1, max_length=6
    )
    optimizer_weight_decay: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        default=None, alias="optimizer.weight_decay", min_length=1, max_length=16
    )

    @field_validator("label_noise", "model_arch", "optimizer_weight_decay")
    @classmethod
    def _no_repeats(cls, value: list[Any] | None) -> list[Any] | None:
        return None if value is None else _distinct(value, "an axis")

    def as_grid(self) -> dict[str, list[Any]]:
        """The given axes by their spec path, e.g. {"model.arch": ["mlp", "linear"]}."""
        values = {
            "label_noise": self.label_noise,
            "model.arch": self.model_arch,
            "optimizer.weight_decay": self.optimizer_weight_decay,
        }
        return {name: list(v) for name, v in values.items() if v is not None}


class SweepSpec(Strict):
    """A grid of trials: the base job spec × alphas × seeds (× optional axes)."""

    base: JobSpec = Field(default_factory=JobSpec)
    alphas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(min_length=1, max_length=32)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=10
    )
    objective: ValMetric = "val_nll"
    axes: SweepAxes | None = None

    @field_validator("base", mode="before")
    @classmethod
    def _no_alpha_or_seed_in_base(cls, value: Any) -> Any:
        if isinstance(value, dict):
            loss = value.get("loss")
            if isinstance(loss, dict) and "alpha" in loss:
                raise ValueError(
                    "base.loss.alpha must not be given in a sweep: list the α values in `alphas`"
                )
            training = value.get("training")
            if isinstance(training, dict) and "seed" in training:
                raise ValueError(
                    "base.training.seed must not be given in a sweep: list the seeds in `seeds`"
                )
        return value

    @field_validator("alphas", "seeds")
    @classmethod
    def _distinct_values(cls, value: list[Any], info: Any) -> list[Any]:
        return _distinct(value, info.field_name)

    def grid(self) -> dict[str, list[Any]]:
        """Every axis of the grid by spec path; α and seed last (they stack)."""
        axes = self.axes.as_grid() if self.axes else {}
        return {**axes, "loss.alpha": list(self.alphas), "training.seed": list(self.seeds)}

    def n_trials(self) -> int:
        """The size of the full grid."""
        return math.prod(len(v) for v in self.grid().values())


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted field (e.g. "model.arch") of a spec dict in place."""
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def stack_key(spec: dict[str, Any]) -> str:
    """Canonical JSON of a resolved spec without α, the training seed, tags and webhook_url.

    Trials with equal keys share architecture, data and optimiser and can be trained
    together as one stacked model (core.ml.sweep.run_trials). Torch-free: the API uses it.
    """
    doc = json.loads(json.dumps(spec))
    for path in STACK_FREE_FIELDS:
        node = doc
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))
