"""MLflow export: a finished job (or sweep) as documents in, one MLflow run (tree) out.

Torch-free and SQLAlchemy-free: the worker task loads the rows (core.services.exports) and
hands plain documents here. Only the `mlflow` client library (mlflow-skinny is enough) is
imported, lazily, so nothing else pays for it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Tenants may tag jobs freely, but not with MLflow's system tags (mlflow.parentRunId would
# hang their run under another's) nor with ours.
RESERVED_TAG_PREFIXES = ("mlflow.", "softlabel.")
NOT_PARAMS = ("tags", "webhook_url", "tracking")
COMPLETE_TAG = "softlabel.export"
MAX_PARAM_CHARS = 6000
_BAD_KEY_CHARS = re.compile(r"[^\w\-. :/]")
RUN_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "canceled": "KILLED"}


@dataclass
class RunDocument:
    """Everything one MLflow run gets."""

    name: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    steps: list[tuple[str, float, int]] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    status: str = "FINISHED"
    key_tag: tuple[str, str] = ("softlabel.job_id", "")


def safe_key(key: str) -> str:
    """A key MLflow accepts (letters, digits, _ - . space : /), others become _."""
    return _BAD_KEY_CHARS.sub("_", key)[:250]


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys; lists and scalars are leaves."""
    if not isinstance(doc, dict):
        return {prefix: doc} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text[:MAX_PARAM_CHARS]


def spec_params(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved spec as flattened params (tags, webhook_url and tracking left out)."""
    kept = {k: v for k, v in spec.items() if k not in NOT_PARAMS}
    return {safe_key(k): _param_value(v) for k, v in flatten(kept, prefix).items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_metrics(doc: dict[str, Any] | None, prefix: str) -> dict[str, float]:
    """Every finite number of a (nested) block as a final metric named prefix.path."""
    if not doc:
        return {}
    flat = flatten(doc, prefix)
    return {
        safe_key(k): float(v)
        for k, v in flat.items()
        if _is_number(v) and float(v) == float(v) and abs(float(v)) != float("inf")
    }


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Test metrics, temperature-scaled ones and post-hoc ones (when the result has them)."""
    metrics = numeric_metrics(result.get("test"), "test")
    metrics.update(numeric_metrics(result.get("temperature_scaled"), "temperature_scaled"))
    metrics.update(numeric_metrics(result.get("posthoc"), "posthoc"))
    for name in ("best_epoch",):
        if _is_number(result.get(name)):
            metrics[name] = float(result[name])
    return metrics


def history_steps(history: list[dict[str, Any]] | None) -> list[tuple[str, float, int]]:
    """Per-epoch history as (metric, value, step=epoch) triples."""
    steps = []
    for index, row in enumerate(history or []):
        step = int(row.get("epoch", index + 1))
        for key, value in row.items():
            if key != "epoch" and _is_number(value) and float(value) == float(value):
                steps.append((safe_key(key), float(value), step))
    return steps


def tenant_tags(tags: dict[str, Any] | None) -> dict[str, str]:
    """The tenant's own tags, without keys in MLflow's or our reserved namespaces."""
    out = {}
    for key, value in (tags or {}).items():
        name = safe_key(str(key))
        if name and not name.startswith(RESERVED_TAG_PREFIXES):
            out[name] = str(value)[:5000]
    return out


def job_run(job: dict[str, Any], *, run_name: str | None = None) -> RunDocument:
    """The run document of a finished job (a dict of its fields, result and artifacts)."""
    result = job.get("result") or {}
    tags = {
        **tenant_tags(job.get("tags")),
        "softlabel.job_id": job["id"],
        "softlabel.status": job["status"],
    }
    if job.get("sweep_id"):
        tags["softlabel.sweep_id"] = job["sweep_id"]
    if job.get("failure_reason"):
        tags["softlabel.failure_reason"] = job["failure_reason"]
    artifacts = dict(job.get("artifacts") or {})
    if result:
        artifacts["result.json"] = json.dumps(result, indent=1, sort_keys=True).encode()
    return RunDocument(
        name=run_name or job["id"],
        params=spec_params(job.get("spec") or {}),
        tags=tags,
        metrics=final_metrics(result),
        steps=history_steps(result.get("history")),
        artifacts=artifacts,
        status=RUN_STATUS.get(job["status"], "FINISHED"),
        key_tag=("softlabel.job_id", job["id"]),
    )


def sweep_run(sweep: dict[str, Any], *, run_name: str | None = None) -> RunDocument:
    """The parent run document of a finished sweep (its request, report and plots)."""
    request = dict(sweep.get("request") or {})
    params = spec_params(request.pop("base", None) or {}, "base")
    params.update(spec_params(request))
    report = sweep.get("report") or {}
    artifacts = dict(sweep.get("artifacts") or {})
    artifacts["report.json"] = json.dumps(report, indent=1, sort_keys=True).encode()
    tags = {
        **tenant_tags(sweep.get("tags")),
        "softlabel.sweep_id": sweep["id"],
        "softlabel.status": sweep["status"],
    }
    return RunDocument(
        name=run_name or sweep["id"],
        params=params,
        tags=tags,
        metrics=numeric_metrics(report.get("recommended"), "recommended"),
        artifacts=artifacts,
        status="FINISHED" if sweep["status"] == "succeeded" else "FAILED",
        key_tag=("softlabel.sweep_id", sweep["id"]),
    )


def limit_http_retries() -> None:
    """Our task retries with backoff; MLflow's own HTTP retries (minutes) are kept short."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def client_for(tracking_uri: str) -> Any:
    """An MlflowClient for the configured server."""
    limit_http_retries()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: Any, name: str) -> str:
    """The id of the named experiment, created when missing (a concurrent create is fine)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _finished_run(client: Any, exp_id: str, key_tag: tuple[str, str]) -> str | None:
    """A completed earlier export of the same object (a retry reuses it); half-done ones go."""
    key, value = key_tag
    runs = client.search_runs([exp_id], filter_string=f"tags.`{key}` = '{value}'")
    done = None
    for run in runs:
        if run.data.tags.get(COMPLETE_TAG) == "complete" and done is None:
            done = str(run.info.run_id)
        elif run.data.tags.get(COMPLETE_TAG) != "complete":
            client.delete_run(run.info.run_id)
    return done


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _log_values(client: Any, run_id: str, doc: RunDocument) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    for part in _chunks([Param(k, v) for k, v in sorted(doc.params.items())], 100):
        client.log_batch(run_id, params=part)
    metrics = [Metric(k, v, now, step) for k, v, step in doc.steps]
    metrics += [Metric(k, v, now, 0) for k, v in sorted(doc.metrics.items())]
    for part in _chunks(metrics, 1000):
        client.log_batch(run_id, metrics=part)
    for part in _chunks([RunTag(k, v) for k, v in sorted(doc.tags.items())], 100):
        client.log_batch(run_id, tags=part)


def _log_artifacts(client: Any, run_id: str, artifacts: dict[str, bytes]) -> None:
    if not artifacts:
        return
    with tempfile.TemporaryDirectory(prefix="softlabel-mlflow-") as tmp:
        for name, data in artifacts.items():
            (Path(tmp) / name).write_bytes(data)
        client.log_artifacts(run_id, tmp)


def write_run(
    client: Any, doc: RunDocument, *, exp_id: str, parent_run_id: str | None = None
) -> str:
    """Create the run (or reuse a completed one), log everything, end it; returns its id."""
    existing = _finished_run(client, exp_id, doc.key_tag)
    if existing is not None:
        return existing
    tags = {doc.key_tag[0]: doc.key_tag[1]}
    if parent_run_id is not None:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, tags=tags, run_name=doc.name)
    run_id = str(run.info.run_id)
    _log_values(client, run_id, doc)
    _log_artifacts(client, run_id, doc.artifacts)
    client.set_tag(run_id, COMPLETE_TAG, "complete")
    client.set_terminated(run_id, status=doc.status)
    return run_id


def export_job(client: Any, job: dict[str, Any], *, experiment: str, run_name: str | None) -> str:
    """Export one finished job as a run; returns the run id."""
    exp_id = experiment_id(client, experiment)
    return write_run(client, job_run(job, run_name=run_name), exp_id=exp_id)


def export_sweep(
    client: Any,
    sweep: dict[str, Any],
    trials: list[dict[str, Any]],
    *,
    experiment: str,
    run_name: str | None,
) -> tuple[str, dict[str, str]]:
    """Export a sweep as a parent run with one child run per trial; (parent id, job → run)."""
    exp_id = experiment_id(client, experiment)
    parent = write_run(client, sweep_run(sweep, run_name=run_name), exp_id=exp_id)
    children = {}
    for trial in trials:
        spec = trial.get("spec") or {}
        name = (
            f"alpha={spec.get('loss', {}).get('alpha')} seed={spec.get('training', {}).get('seed')}"
        )
        doc = job_run(trial, run_name=name)
        children[trial["id"]] = write_run(client, doc, exp_id=exp_id, parent_run_id=parent)
    return parent, children
