"""What the dashboard's templates show, shaped from the services' rows (no queries here)."""

from __future__ import annotations

from typing import Any

from core.catalog import SCALAR_TEST_METRICS
from core.models import Job, Sweep
from core.states import TERMINAL_STATUSES
from core.timeutil import iso

ADVICE = {
    "invalid_dataset": "Check the dataset: its shape must fit the architecture "
    "(GET /v1/catalog lists which fit) and each class needs at least 3 rows.",
    "diverged": "The loss became NaN: lower optimizer.lr, or try adamw with a smaller batch.",
    "timeout": "The job ran past the time limit: fewer epochs, a smaller model, or raise "
    "SOFTLABEL_TASK_SOFT_TIME_LIMIT.",
    "worker_lost": "The worker died on every attempt: check the worker logs (memory?) "
    "and submit again.",
    "device_unavailable": "No CUDA device on the worker: set training.device to auto or cpu.",
    "canceled": "Canceled on request.",
    "internal": "An internal error: the worker log has the traceback.",
}


def job_row(job: Job) -> dict[str, Any]:
    """One line of the jobs table: status, progress and what the job trains."""
    spec = job.spec or {}
    progress = job.progress or {}
    dataset = spec.get("dataset") or {}
    return {
        "id": job.id,
        "status": job.status,
        "terminal": job.status in TERMINAL_STATUSES,
        "cancel_requested": bool(job.cancel_requested),
        "epoch": progress.get("epoch"),
        "epochs": progress.get("epochs") or (spec.get("training") or {}).get("epochs"),
        "alpha": (spec.get("loss") or {}).get("alpha"),
        "seed": (spec.get("training") or {}).get("seed"),
        "arch": (spec.get("model") or {}).get("arch"),
        "dataset": dataset.get("name") or dataset.get("id") or dataset.get("source"),
        "sweep_id": job.sweep_id,
        "tags": job.tags or {},
        "created_at": iso(job.created_at),
        "failure_reason": job.failure_reason,
    }


def job_state(job: Job) -> dict[str, Any]:
    """The live part of a job, as the event stream sends it."""
    row = job_row(job)
    keys = ("id", "status", "terminal", "cancel_requested", "epoch", "epochs", "failure_reason")
    return {k: row[k] for k in keys}


def metric_columns(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The metric blocks side by side: raw test, temperature-scaled, and any post-hoc ones."""
    columns: list[tuple[str, dict[str, Any]]] = [("test", result.get("test") or {})]
    scaled = result.get("temperature_scaled") or {}
    if scaled.get("test"):
        label = f"temperature-scaled (T = {scaled.get('temperature', float('nan')):.3f})"
        columns.append((label, scaled["test"]))
    posthoc = result.get("posthoc") or {}
    if isinstance(posthoc, dict):
        for name, block in posthoc.items():
            if isinstance(block, dict) and isinstance(block.get("test"), dict):
                columns.append((f"post-hoc {name}", block["test"]))
    return columns


def metric_table(result: dict[str, Any]) -> dict[str, Any]:
    """Rows of scalar metrics with one value per column (None where a column lacks one)."""
    columns = metric_columns(result)
    rows = [
        {"name": m, "cells": [block.get(m) for _, block in columns]}
        for m in SCALAR_TEST_METRICS
        if any(isinstance(block.get(m), int | float) for _, block in columns)
    ]
    return {"columns": [c for c, _ in columns], "rows": rows}


def failure(job: Job) -> dict[str, str] | None:
    """The failure reason, its message and what to do about it."""
    if not job.failure_reason:
        return None
    return {
        "reason": job.failure_reason,
        "message": job.failure_message or "",
        "advice": ADVICE.get(job.failure_reason, ""),
    }


def sweep_row(sweep: Sweep, progress: dict[str, Any], status: str) -> dict[str, Any]:
    """One line of the sweeps table."""
    request = sweep.request or {}
    return {
        "id": sweep.id,
        "status": status,
        "terminal": status in TERMINAL_STATUSES,
        "done": progress["done"],
        "total": progress["total"],
        "alphas": request.get("alphas") or [],
        "seeds": request.get("seeds") or [],
        "objective": request.get("objective", "val_nll"),
        "has_report": sweep.report is not None,
        "recommended": ((sweep.report or {}).get("recommended") or {}).get("alpha"),
        "created_at": iso(sweep.created_at),
    }


def context_label(context: dict[str, Any]) -> str:
    """A grid point's non-α axes as text ('' when the sweep has none)."""
    return ", ".join(f"{k}={v}" for k, v in sorted((context or {}).items()))


def report_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rows with their context as text, for the sweep table."""
    rows = report["rows"]
    return [{**row, "context_label": context_label(row.get("context") or {})} for row in rows]


def _fmt(x: Any, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def pooled_bin_lines(report: dict[str, Any]) -> list[tuple[Any, str, int, str, str]]:
    """The overlay's table: (α, bin, count, confidence, accuracy) per non-empty pooled bin."""
    return [
        (row["alpha"], f"{b['lo']:.3f}–{b['hi']:.3f}", b["count"], _fmt(b["confidence"]),
         _fmt(b["accuracy"]))
        for row in report["rows"]
        for b in row.get("reliability") or []
        if b["count"]
    ]
