"""The sweep spec: a base job spec, α values, seeds and further grid axes (docs/architecture.md)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator

from core.spec import METHOD_PARAMS, Arch, JobSpec, Strict, ValMetric, distinct_values
from core.validation import check_alpha

# Fields that may differ between trials trained together as one stacked model.
STACK_FREE_FIELDS = (("loss", "alpha"), ("training", "seed"), ("tags",), ("webhook_url",))



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
    split_train_fraction: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        default=None, alias="split.train_fraction", min_length=1, max_length=16
    )
    loss_method: list[
        Literal["label_smoothing", "margin", "focal", "focal_adaptive", "confidence_penalty"]
    ] | None = Field(default=None, alias="loss.method", min_length=1, max_length=5)
    loss_gamma: list[Annotated[float, Field(ge=0, le=100)]] | None = Field(
        default=None, alias="loss.gamma", min_length=1, max_length=16
    )
    loss_margin: list[Annotated[float, Field(gt=0, le=1e4)]] | None = Field(
        default=None, alias="loss.margin", min_length=1, max_length=16
    )
    loss_margin_weight: list[Annotated[float, Field(ge=0, le=1e3)]] | None = Field(
        default=None, alias="loss.margin_weight", min_length=1, max_length=16
    )
    loss_beta: list[Annotated[float, Field(ge=0, le=100)]] | None = Field(
        default=None, alias="loss.beta", min_length=1, max_length=16
    )

    @field_validator(
        "label_noise", "model_arch", "optimizer_weight_decay", "split_train_fraction",
        "loss_method", "loss_gamma", "loss_margin", "loss_margin_weight", "loss_beta",
    )
    @classmethod
    def _no_repeats(cls, value: list[Any] | None) -> list[Any] | None:
        return None if value is None else distinct_values(value, "an axis")

    def as_grid(self) -> dict[str, list[Any]]:
        """The given axes by their spec path, e.g. {"model.arch": ["mlp", "linear"]}."""
        values = {
            "label_noise": self.label_noise,
            "model.arch": self.model_arch,
            "optimizer.weight_decay": self.optimizer_weight_decay,
            "split.train_fraction": self.split_train_fraction,
            "loss.method": self.loss_method,
            "loss.gamma": self.loss_gamma,
            "loss.margin": self.loss_margin,
            "loss.margin_weight": self.loss_margin_weight,
            "loss.beta": self.loss_beta,
        }
        return {name: list(v) for name, v in values.items() if v is not None}


class SweepSpec(Strict):
    """A grid of trials: the base job spec × alphas × seeds (× optional axes)."""

    base: JobSpec = Field(default_factory=JobSpec)
    alphas: list[Annotated[float, Field(ge=0, lt=1), AfterValidator(check_alpha)]] = Field(
        min_length=1, max_length=32
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=10
    )
    objective: ValMetric = "val_nll"
    axes: SweepAxes | None = None
    target_accuracy: float = Field(default=0.9, gt=0, le=1)

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
        return distinct_values(value, info.field_name)

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


def applicable_point(spec: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """Make a trial's spec dict and grid point agree with its loss.method, in place.

    A sweep crosses loss.method with α and the method parameters; α applies only to
    label_smoothing and each parameter only to its methods, so those values are dropped
    (α set to 0, the parameter to None) and the point keeps what the trial really uses.
    Trials that then coincide are the same trial (the caller keeps the first).
    """
    loss = spec.setdefault("loss", {})
    method = loss.get("method", "label_smoothing")
    own = METHOD_PARAMS.get(method, {})
    kept = dict(point)
    for name in ("gamma", "margin", "margin_weight", "beta"):
        if name not in own:
            loss[name] = None
            kept.pop(f"loss.{name}", None)
    if method != "label_smoothing":
        loss["alpha"] = 0.0
        if "loss.alpha" in kept:
            kept["loss.alpha"] = 0.0
    return kept


# What the stacked trainer takes (core.ml.sweep.can_stack also refuses models with buffers).
STACKED_ARCHS = ("linear", "mlp", "transformer")  # cnn and resnet carry BatchNorm buffers


def may_stack(spec: dict[str, Any]) -> bool:
    """Whether trials of this resolved spec can train stacked; torch-free (the API groups by it).

    A trial that cannot (BatchNorm nets, dropout, another loss method, a learning-rate
    schedule) is enqueued on its own: a plain job with its own checkpoints and resume.
    """
    try:
        job = JobSpec.model_validate(spec)  # a stored spec may predate fields: the spec's defaults
    except ValidationError:
        return False  # alone is always safe
    return (job.model.arch in STACKED_ARCHS and job.model.dropout == 0
            and job.loss.method == "label_smoothing" and job.training.schedule.name == "constant")


def group_key(spec: dict[str, Any], job_id: str) -> str:
    """The group a sweep trial is enqueued (and requeued) in: its stack_key, or its own id."""
    return stack_key(spec) if may_stack(spec) else job_id


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
