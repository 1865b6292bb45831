"""Client commands of the `softlabel` CLI: submit, sweep, status, result, cancel.

Exit codes (stable; pipelines branch on them):
  0  succeeded (or: submitted / printed, when not waiting)
  1  the job or sweep failed
  2  usage or input error: bad arguments, unreadable spec file, 4xx from the API
     (invalid spec 422, unknown id 404, bad key 401, cancel of a finished job 409)
  3  the job or sweep was canceled
  4  not finished: --timeout passed while waiting, or `result` of a job still running
  5  the API could not be reached or answered 5xx
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import typer

from softlabel.client import ApiError, Client, Job, WaitTimeout

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELED, EXIT_NOT_DONE, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5
STATUS_EXIT = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "canceled": EXIT_CANCELED}

ApiUrl = typer.Option(
    "http://127.0.0.1:8000", "--api-url", envvar="SOFTLABEL_API_URL", help="API base URL"
)
ApiKey = typer.Option("", "--api-key", envvar="SOFTLABEL_API_KEY", help="API key")


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        _err(f"cannot read {path}: {exc.strerror}")
        raise typer.Exit(EXIT_USAGE) from exc
    except ValueError as exc:
        _err(f"{path} is not valid JSON: {exc}")
        raise typer.Exit(EXIT_USAGE) from exc
    if not isinstance(doc, dict):
        _err(f"{path} must hold a JSON object")
        raise typer.Exit(EXIT_USAGE)
    return doc


class _Guard:
    """Turn API and network errors into messages and the documented exit codes."""

    def __enter__(self) -> _Guard:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        if exc is None or isinstance(exc, typer.Exit):
            return
        if isinstance(exc, ApiError):
            _err(exc.detail)
            for field_error in exc.problem.get("errors") or []:
                _err(f"  {field_error.get('field')}: {field_error.get('msg')}")
            code = EXIT_UNAVAILABLE if exc.status_code >= 500 else EXIT_USAGE
            raise typer.Exit(code) from exc
        if isinstance(exc, WaitTimeout):
            _err(str(exc))
            raise typer.Exit(EXIT_NOT_DONE) from exc
        if isinstance(exc, httpx.HTTPError):
            _err(f"cannot reach the API: {exc}")
            raise typer.Exit(EXIT_UNAVAILABLE) from exc


def _print(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


def _wait_with_progress(client: Client, job: Job, timeout: float | None, quiet: bool) -> Job:
    if quiet or not sys.stderr.isatty():
        return client.jobs.wait(job.id, timeout=timeout)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    epochs = int(job.raw.get("spec", {}).get("training", {}).get("epochs", 1))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(job.id, total=epochs, metrics="queued")

        def update(current: Job) -> None:
            latest = current.progress.get("latest") or {}
            shown = " ".join(f"{k}={latest[k]:.4f}" for k in ("val_nll", "val_ece") if k in latest)
            bar.update(
                task,
                completed=current.progress.get("epoch") or 0,
                total=current.progress.get("epochs") or epochs,
                metrics=f"{current.status} {shown}".strip(),
            )

        return client.jobs.wait(job.id, timeout=timeout, on_update=update, poll_max=2.0)


def submit(
    spec_file: Path = typer.Argument(..., help="Job spec (JSON)"),
    wait: bool = typer.Option(False, "--wait", help="Wait for the job to end; exit by status"),
    timeout: float | None = typer.Option(None, help="Seconds to wait at most (exit 4 after)"),
    idempotency_key: str | None = typer.Option(None, help="Idempotency-Key for safe retries"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar"),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Submit a job; with --wait, show progress and exit 0/1/3 as it succeeds/fails/cancels."""
    spec = _read_json(spec_file)
    with _Guard(), Client(api_url, api_key) as client:
        job = client.jobs.submit(spec, idempotency_key=idempotency_key)
        if not wait:
            _print({"id": job.id, "status": job.status})
            return
        typer.echo(f"submitted {job.id}", err=True)
        final = _wait_with_progress(client, job, timeout, quiet)
        _print(final.raw)
        raise typer.Exit(STATUS_EXIT.get(final.status, EXIT_NOT_DONE))


def sweep(
    sweep_file: Path = typer.Argument(..., help="Sweep request (JSON): base spec, alphas, seeds"),
    wait: bool = typer.Option(False, "--wait", help="Wait for the sweep to end"),
    timeout: float | None = typer.Option(None, help="Seconds to wait at most (exit 4 after)"),
    idempotency_key: str | None = typer.Option(None, help="Idempotency-Key for safe retries"),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Submit an α sweep; with --wait, wait for it and print its report."""
    body = _read_json(sweep_file)
    with _Guard(), Client(api_url, api_key) as client:
        created = client.sweeps.submit(body, idempotency_key=idempotency_key)
        if not wait:
            _print(created)
            return
        sweep_id = created["id"]
        typer.echo(f"submitted {sweep_id}", err=True)
        final = client.sweeps.wait(
            sweep_id,
            timeout=timeout,
            on_update=lambda s: typer.echo(f"{sweep_id}: {s.get('status')}", err=True),
        )
        if final.get("status") == "succeeded":
            with contextlib.suppress(ApiError):
                final = {**final, "report": client.sweeps.report(sweep_id)}
        _print(final)
        raise typer.Exit(STATUS_EXIT.get(str(final.get("status")), EXIT_NOT_DONE))


def status(
    job_id: str = typer.Argument(...),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Print a job's status, progress and failure (exit 0 if it exists)."""
    with _Guard(), Client(api_url, api_key) as client:
        _print(client.jobs.get(job_id).raw)


def _table(result: dict[str, Any]) -> str:
    test = result.get("test") or {}
    scaled = result.get("temperature_scaled") or {}
    scaled_test = scaled.get("test") or {}
    names = (
        "accuracy",
        "nll",
        "brier",
        "ece",
        "ece_adaptive",
        "mce",
        "classwise_ece",
        "mean_confidence",
        "overconfidence",
    )
    head = f"{'metric':<16} {'test':>10} {'T-scaled':>10}"
    lines = [f"job {result.get('job_id')}", head, "-" * len(head)]
    for name in names:
        if name in test:
            other = scaled_test.get(name)
            shown = f"{other:>10.4f}" if isinstance(other, int | float) else f"{'':>10}"
            lines.append(f"{name:<16} {test[name]:>10.4f} {shown}")
    if scaled.get("temperature") is not None:
        lines.append(f"{'temperature':<16} {'':>10} {scaled['temperature']:>10.4f}")
    return "\n".join(lines)


def result(
    job_id: str = typer.Argument(...),
    format: str = typer.Option("json", "--format", help="json or table"),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Print a succeeded job's result; exit 1 failed, 3 canceled, 4 not finished yet."""
    if format not in ("json", "table"):
        _err("--format must be json or table")
        raise typer.Exit(EXIT_USAGE)
    with _Guard(), Client(api_url, api_key) as client:
        job = client.jobs.get(job_id)
        if job.status != "succeeded":
            reason = (
                f" ({job.failure.get('reason')}: {job.failure.get('message')})"
                if (job.failure)
                else ""
            )
            _err(f"job {job_id} is {job.status}{reason}")
            raise typer.Exit(STATUS_EXIT.get(job.status, EXIT_NOT_DONE))
        doc = client.jobs.result(job_id).raw
        typer.echo(_table(doc) if format == "table" else json.dumps(doc, indent=2))


def cancel(
    job_id: str = typer.Argument(...),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Cancel a job (a running one stops within seconds); 2 if it has already finished."""
    with _Guard(), Client(api_url, api_key) as client:
        job = client.jobs.cancel(job_id)
        _print({"id": job.id, "status": job.status, "cancel_requested": job.cancel_requested})


def register(app: typer.Typer) -> None:
    """Add the client commands to the CLI."""
    for command in (submit, sweep, status, result, cancel):
        app.command(
            epilog="Exit codes: 0 succeeded, 1 failed, 2 usage/input error, "
            "3 canceled, 4 not finished, 5 API unavailable."
        )(command)
