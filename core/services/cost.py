"""Cost caps: a job's estimated parameters, FLOPs per epoch and activation memory, checked
against the configured limits before anything is stored or queued (core.ml.cost estimates)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import ValidationAppError
from core.ml.cost import CostEstimate, estimate_cost
from core.services.specs import DataShape, data_shape
from core.spec import JobSpec


def spec_cost(*, spec: JobSpec, shape: DataShape) -> CostEstimate:
    """The estimate for one job of `spec` on data of `shape`."""
    n_train = max(1, round(shape.n_rows * (1.0 - spec.split.val - spec.split.test)))
    return estimate_cost(
        spec.model.model_dump(), n_features=shape.n_features, n_classes=shape.n_classes,
        image_shape=shape.image_shape, n_train=n_train,
        n_val=max(1, round(shape.n_rows * spec.split.val)),
        batch_size=spec.training.batch_size, binary=spec.loss.variant == "binary",
    )


def _over(field: str, message: str) -> ValidationAppError:
    return ValidationAppError(message, extra={"errors": [
        {"loc": ["body", *field.split(".")], "field": field, "msg": message,
         "type": "cost_limit"}]})


def enforce_caps(cost: CostEstimate, *, settings: Settings, trials: int = 1) -> None:
    """422 naming the cap and the estimate when `trials` stacked copies exceed a limit."""
    what = "this job" if trials == 1 else f"a stacked group of {trials} trials"
    params = cost.parameters * trials
    if params > settings.max_model_params:
        raise _over("model", (
            f"{what} has an estimated {params:,} parameters, above the cap of "
            f"{settings.max_model_params:,} (SOFTLABEL_MAX_MODEL_PARAMS); use fewer or "
            f"narrower layers"))
    gflop = cost.epoch_gflop * trials
    if gflop > settings.max_epoch_gflop:
        raise _over("model", (
            f"{what} needs an estimated {gflop:,.1f} GFLOP per epoch, above the cap of "
            f"{settings.max_epoch_gflop:,.1f} (SOFTLABEL_MAX_EPOCH_GFLOP); use a smaller model "
            f"or less data"))
    act = cost.activation_bytes * trials
    if act > settings.max_activation_bytes:
        raise _over("training.batch_size", (
            f"{what} needs an estimated {act / 2**30:,.2f} GiB of activations per batch, above "
            f"the cap of {settings.max_activation_bytes / 2**30:,.2f} GiB "
            f"(SOFTLABEL_MAX_ACTIVATION_BYTES); lower training.batch_size"))


def check_job_cost(session: Session, *, tenant_id: str, spec: JobSpec, settings: Settings,
                   trials: int = 1) -> CostEstimate:
    """Estimate a spec's cost on its dataset and enforce the caps; returns the estimate."""
    cost = spec_cost(spec=spec, shape=data_shape(session, tenant_id=tenant_id, spec=spec))
    enforce_caps(cost, settings=settings, trials=trials)
    return cost
