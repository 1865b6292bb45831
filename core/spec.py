"""The job spec (v1): the contract between the API and the workers."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core.validation import SafeStr, check_alpha, check_http_url

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
LossMethod = Literal["label_smoothing", "margin", "focal", "focal_adaptive", "confidence_penalty"]
LOSS_METHODS: tuple[str, ...] = get_args(LossMethod)
# The parameters each loss.method reads (label_smoothing reads alpha/variant/prior/form).
METHOD_PARAMS: dict[str, dict[str, float]] = {
    "label_smoothing": {},
    "margin": {"margin": 10.0, "margin_weight": 0.1},
    "focal": {"gamma": 3.0},
    "focal_adaptive": {"gamma": 3.0},
    "confidence_penalty": {"beta": 0.1},
}
PosthocMethod = Literal["temperature", "vector_scaling", "matrix_scaling", "histogram_binning",
                        "isotonic", "platt"]
POSTHOC_METHODS: tuple[str, ...] = get_args(PosthocMethod)
DEFAULT_POSTHOC = ("temperature", "vector_scaling", "isotonic")
RESNET_DEPTHS = (20, 32, 44, 56, 110)
SCHEDULES = ("constant", "step", "cosine")
DEFAULT_HIDDEN = {"cnn": [32, 64, 128]}  # every other arch: [256, 256]


def distinct_values(values: list[Any], name: str) -> list[Any]:
    """The values unchanged; ValueError if any repeats (`name` says which list)."""
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, but got {values}")
    return values


class Strict(BaseModel):
    """Base of every request model: unknown fields are an error, types are strict.

    Strict: an integer field refuses `true` and "3", a string field refuses 3; NaN and
    infinities (which Python's JSON parser accepts) are refused everywhere.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


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
    id: SafeStr = Field(min_length=1, max_length=64)


DatasetSpec = Annotated[
    BuiltinDataset | SyntheticDataset | UploadDataset, Field(discriminator="source")
]


class SplitSpec(Strict):
    """Stratified train/validation/test split."""

    val: float = Field(default=0.15, gt=0, lt=0.5)
    test: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    train_fraction: float = Field(default=1.0, gt=0, le=1)


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

    alpha: Annotated[float, AfterValidator(check_alpha)] = Field(default=0.1, ge=0, lt=1)
    variant: Variant = "uniform"
    prior: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(default=None, max_length=1000)
    form: Form = "ce"
    method: LossMethod = "label_smoothing"
    gamma: float | None = Field(default=None, ge=0, le=100)
    margin: float | None = Field(default=None, gt=0, le=1e4)
    margin_weight: float | None = Field(default=None, ge=0, le=1e3)
    beta: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _check_method(self) -> LossSpec:
        own = METHOD_PARAMS[self.method]
        for name in ("gamma", "margin", "margin_weight", "beta"):
            if name not in own and getattr(self, name) is not None:
                users = [m for m, p in METHOD_PARAMS.items() if name in p]
                raise ValueError(f"loss.{name} applies only to loss.method {' or '.join(users)}, "
                                 f"not {self.method!r}; remove it")
            if name in own and getattr(self, name) is None:
                setattr(self, name, own[name])
        if self.method != "label_smoothing":
            if "alpha" in self.model_fields_set and self.alpha != 0:
                raise ValueError(f"loss.alpha applies only to loss.method 'label_smoothing', "
                                 f"not {self.method!r}; remove it or set it to 0")
            if self.variant != "uniform" or self.form != "ce":
                raise ValueError(f"loss.variant and loss.form apply only to loss.method "
                                 f"'label_smoothing'; remove them for {self.method!r}")
            self.alpha = 0.0
        return self

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
    posthoc: list[PosthocMethod] = Field(
        default_factory=lambda: list[PosthocMethod](["temperature", "vector_scaling", "isotonic"]),
        max_length=6)

    @field_validator("posthoc")
    @classmethod
    def _distinct_posthoc(cls, value: list[str]) -> list[str]:
        return distinct_values(value, "calibration.posthoc")


# --- Evaluation under shift (issue 16) -----------------------------------------------------

ShiftName = Literal["translate", "rotate", "gaussian_noise", "blur", "contrast", "feature_dropout"]
SHIFT_NAMES: tuple[str, ...] = get_args(ShiftName)
IMAGE_SHIFTS = ("translate", "rotate", "gaussian_noise", "blur", "contrast")
TABULAR_SHIFTS = ("gaussian_noise", "feature_dropout")


class ShiftSpec(Strict):
    """One test-time perturbation of the clean test split, at intensities 1–5."""

    name: ShiftName
    intensities: list[Annotated[int, Field(ge=1, le=5)]] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5], min_length=1, max_length=5
    )

    @field_validator("intensities")
    @classmethod
    def _distinct_intensities(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"intensities must not repeat a value, but got {value}")
        return sorted(value)


class EvaluationSpec(Strict):
    """Extra evaluation: test-time shifts (seeded; the seed picks noise, directions, masks)."""

    shifts: list[ShiftSpec] = Field(default_factory=list, max_length=len(SHIFT_NAMES))
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @field_validator("shifts")
    @classmethod
    def _distinct_shifts(cls, value: list[ShiftSpec]) -> list[ShiftSpec]:
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation.shifts must not name a perturbation twice: {names}")
        return value


class MlflowTracking(Strict):
    """Where a job's MLflow run goes; the server is the workers' SOFTLABEL_MLFLOW_TRACKING_URI."""

    experiment: str = Field(min_length=1, max_length=200, pattern=r"^[\w .:/-]+$")
    run_name: str | None = Field(default=None, min_length=1, max_length=200)


class TrackingSpec(Strict):
    """Experiment tracking; a spec names an experiment, never a tracking server URI."""

    mlflow: MlflowTracking | None = None


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
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    tags: dict[
        Annotated[SafeStr, Field(max_length=64)], Annotated[SafeStr, Field(max_length=256)]
    ] = Field(
        default_factory=dict, max_length=32
    )
    webhook_url: str | None = Field(default=None, max_length=2000)
    tracking: TrackingSpec | None = None

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_scheme(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

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
