"""Checks of a job spec against the data it names (beyond what the schema can say)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import ValidationAppError
from core.ml.arch_compat import arch_incompatibility, compatible_archs
from core.ml.builtin_datasets import BUILTIN_DATASETS
from core.models import Dataset
from core.spec import IMAGE_SHIFTS, TABULAR_SHIFTS, JobSpec


@dataclass(frozen=True)
class DataShape:
    """What a spec check needs to know about a dataset."""

    n_features: int
    n_classes: int
    image_shape: tuple[int, ...] | None
    dataset_id: str | None = None
    n_rows: int = 0


def _invalid(field: str, message: str) -> ValidationAppError:
    return ValidationAppError(
        message,
        extra={
            "errors": [
                {
                    "loc": ["body", *field.split(".")],
                    "field": field,
                    "msg": message,
                    "type": "value_error",
                }
            ]
        },
    )


def data_shape(session: Session, *, tenant_id: str, spec: JobSpec) -> DataShape:
    """Shape of the dataset a spec names; an unknown upload id is a 422 on dataset.id."""
    ds = spec.dataset
    if ds.source == "builtin":
        info = BUILTIN_DATASETS[ds.name]
        return DataShape(info.n_features, info.n_classes, info.image_shape,
                         n_rows=info.n_samples)
    if ds.source == "synthetic":
        return DataShape(ds.features, ds.classes, None, n_rows=ds.samples)
    row = session.scalar(select(Dataset).where(Dataset.id == ds.id, Dataset.tenant_id == tenant_id))
    if row is None:
        raise _invalid(
            "dataset.id", f"dataset {ds.id} does not exist; upload it first with POST /v1/datasets"
        )
    shape = row.info.get("image_shape")
    return DataShape(row.n_features, row.n_classes, tuple(shape) if shape else None, row.id,
                     n_rows=row.n_rows)


def _check_shifts(spec: JobSpec, shape: DataShape) -> None:
    """Every evaluation shift must fit the data: image perturbations need an image shape."""
    fits = IMAGE_SHIFTS if shape.image_shape is not None else TABULAR_SHIFTS
    kind = "image" if shape.image_shape is not None else "tabular (non-image)"
    for i, shift in enumerate(spec.evaluation.shifts):
        if shift.name not in fits:
            raise _invalid(
                f"evaluation.shifts.{i}.name",
                f"shift {shift.name!r} does not apply to {kind} data; shifts that fit this "
                f"dataset: {', '.join(fits)}",
            )


def check_job_spec(
    session: Session, *, tenant_id: str, spec: JobSpec
) -> tuple[dict[str, Any], str | None]:
    """Validate a spec against its data; return the resolved spec and the upload's id."""
    shape = data_shape(session, tenant_id=tenant_id, spec=spec)
    why = arch_incompatibility(spec.model.arch, shape.n_features, shape.image_shape)
    if why is not None:
        fits = ", ".join(compatible_archs(shape.n_features, shape.image_shape))
        raise _invalid("model.arch", f"{why}. Architectures that fit this dataset: {fits}")
    if spec.training.augment and shape.image_shape is None:
        raise _invalid(
            "training.augment",
            "training.augment shifts images and needs image-shaped data (e.g. digits or an NPZ "
            "upload whose X is (N, H, W)); set it to false for this dataset",
        )
    if spec.loss.variant == "binary" and shape.n_classes != 2:
        raise _invalid(
            "loss.variant",
            f"loss.variant 'binary' needs exactly 2 classes, but the "
            f"dataset has {shape.n_classes}; use 'uniform'",
        )
    if spec.loss.prior is not None and len(spec.loss.prior) != shape.n_classes:
        raise _invalid(
            "loss.prior",
            f"loss.prior must have one entry per class "
            f"({shape.n_classes}), but has {len(spec.loss.prior)}",
        )
    _check_shifts(spec, shape)
    classes = spec.calibration.projection_classes
    if classes is not None and (len(set(classes)) != 3 or max(classes) >= shape.n_classes):
        raise _invalid(
            "calibration.projection_classes",
            f"calibration.projection_classes must be 3 distinct class indices "
            f"below {shape.n_classes}, but got {classes}",
        )
    return spec.resolved(), shape.dataset_id
