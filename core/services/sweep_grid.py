"""A sweep's grid: every trial's spec (each checked like a job's), its tags, and its errors."""

from __future__ import annotations

import itertools
import json
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from core.errors import ValidationAppError
from core.services.specs import check_job_spec
from core.spec import JobSpec
from core.sweep_spec import SweepSpec, applicable_point, set_path, stack_key

ALPHA, SEED = "loss.alpha", "training.seed"
SHORT_AXIS_NAMES = {
    "loss.alpha": "alpha",
    "training.seed": "seed",
    "label_noise": "label_noise",
    "model.arch": "arch",
    "optimizer.weight_decay": "weight_decay",
    "split.train_fraction": "train_fraction",
    "loss.method": "method",
    "loss.gamma": "gamma",
    "loss.margin": "margin",
    "loss.margin_weight": "margin_weight",
    "loss.beta": "beta",
}


def _axis_error(axis: str, value: Any, message: str) -> ValidationAppError:
    field = "alphas" if axis == ALPHA else "seeds" if axis == SEED else f"axes.{axis}"
    detail = f"{field} value {value!r} gives an invalid trial: {message}"
    return ValidationAppError(
        detail,
        extra={
            "errors": [
                {
                    "loc": ["body", *field.split(".", 1)],
                    "field": field,
                    "msg": detail,
                    "type": "value_error",
                }
            ]
        },
    )


def _culprit(point: dict[str, Any], fields: list[str]) -> tuple[str, Any]:
    """The grid axis behind a trial's error, matched on the offending field's top-level name."""
    axes = [a for a in point if a not in (ALPHA, SEED)]
    for field in fields:
        for axis in axes:
            if field.split(".")[0] == axis.split(".")[0]:
                return axis, point[axis]
    axis = axes[0] if axes else ALPHA
    return axis, point[axis]


def expand_trials(
    session: Session, *, tenant_id: str, request: SweepSpec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """Every trial of the grid as (resolved spec, grid point); each checked like a job spec."""
    grid = request.grid()
    base = request.base.resolved()
    specs, points, dataset_id = [], [], None
    checked: dict[str, tuple[dict[str, Any], str | None]] = {}
    seen: set[str] = set()
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        raw = {k: v for k, v in base.items() if k not in ("tags",)}
        raw = JobSpec.model_validate(raw).resolved()  # a deep copy
        for path, value in point.items():
            set_path(raw, path, value)
        point = applicable_point(raw, point)  # α and method parameters only where they apply
        if (seen_key := json.dumps(raw, sort_keys=True)) in seen:
            continue
        seen.add(seen_key)
        key = stack_key(raw)
        if key not in checked:  # α and seed never change what check_job_spec decides
            try:
                spec = JobSpec.model_validate(raw)
            except ValidationError as exc:
                msg = "; ".join(str(e.get("msg")) for e in exc.errors())
                locs = [".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()]
                raise _axis_error(*_culprit(point, locs), msg) from exc
            try:
                checked[key] = check_job_spec(session, tenant_id=tenant_id, spec=spec)
            except ValidationAppError as exc:
                fields = [str(e.get("field", "")) for e in exc.extra.get("errors", [])]
                raise _axis_error(*_culprit(point, fields), exc.detail) from exc
        dataset_id = checked[key][1]
        spec_doc = JobSpec.model_validate(raw).resolved()
        specs.append(spec_doc)
        points.append(point)
    return specs, points, dataset_id


def trial_tags(base_tags: dict[str, str], sweep_id: str, point: dict[str, Any]) -> dict[str, str]:
    """The tags of one trial: the base tags, the sweep id and its grid point (short names)."""
    tags = dict(base_tags)
    tags["sweep_id"] = sweep_id
    for path, value in point.items():
        tags[SHORT_AXIS_NAMES.get(path, path)] = (
            f"{value:g}" if isinstance(value, float) else str(value)
        )
    return tags
