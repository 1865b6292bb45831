"""Named schemas of the open-ended JSON documents (result, report, catalog) for OpenAPI.

The routes return these documents as stored; the models only name and type their main fields
in /openapi.json so generated clients get typed attributes (extra fields stay allowed).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class OpenDocument(BaseModel):
    """A JSON object whose listed fields are typed; others may appear."""

    model_config = ConfigDict(extra="allow")


class CalibrationSummary(OpenDocument):
    """Calibration and accuracy on the test split (the full list: GET /v1/catalog)."""

    accuracy: float
    nll: float
    brier: float
    ece: float
    n: int | None = Field(default=None, description="Test samples")


class TemperatureScaled(OpenDocument):
    """The temperature fitted on validation and the test metrics after scaling."""

    temperature: float
    test: CalibrationSummary


class HistoryRow(OpenDocument):
    """One epoch: losses and validation metrics."""

    epoch: int


class JobResult(OpenDocument):
    """The result document of a succeeded job."""

    job_id: str
    spec: dict[str, Any]
    test: CalibrationSummary
    temperature_scaled: TemperatureScaled | None = None
    history: list[HistoryRow]
    best_epoch: int | None = None


class SweepReport(OpenDocument):
    """A finished sweep's comparison of its trials (rows per α and context)."""

    status: str | None = None
    objective: str
    trials: dict[str, int]
    rows: list[dict[str, Any]]
    recommended: dict[str, Any] | None = None


class Catalog(OpenDocument):
    """Builtin datasets, architectures, loss variants, optimisers, devices and metric names."""
