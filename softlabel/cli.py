"""The `softlabel` command line: server commands, key management and the demo."""

from __future__ import annotations

import json

import typer

from softlabel import commands, server
from softlabel.datasets_cli import datasets_app

app = typer.Typer(
    help="Softlabel: label-smoothing training with calibration reports.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command()
def migrate(revision: str = typer.Argument("head")) -> None:
    """Upgrade the database schema (Alembic)."""
    server.migrate(revision)
    typer.echo(f"database at {revision}")


@app.command()
def api(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = typer.Option(
        1, min=1, help="uvicorn worker processes (about one per CPU core for production)"
    ),
) -> None:
    """Serve the HTTP API."""
    server.run_api(host, port, workers=workers)


@app.command()
def worker(
    queues: str = "training,control",
    concurrency: int = 1,
    loglevel: str = "warning",
    hostname: str = typer.Option("", help="Celery node name, e.g. gpu0@%h"),
) -> None:
    """Run a training worker."""
    server.run_worker(queues, concurrency, loglevel, hostname)


@app.command()
def beat(loglevel: str = "warning") -> None:
    """Run the scheduler that triggers the reconciler."""
    server.run_beat(loglevel)


@app.command()
def reconcile(
    every: float = typer.Option(0.0, help="Run a pass every N seconds until stopped (0: once)"),
) -> None:
    """Run one reconciler pass and print what it did (or keep running with --every)."""
    if every > 0:
        server.reconcile_loop(every)
        return
    typer.echo(json.dumps(server.reconcile()))


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., help="Tenant name (created if new)"),
    name: str = typer.Option("", help="A label for the key"),
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from core.db import session_scope
    from core.services import tenants

    with session_scope() as session:
        key, raw = tenants.create_api_key(session, tenant_name=tenant, key_name=name)
        key_id = key.id
    typer.echo(json.dumps({"id": key_id, "tenant": tenant, "key": raw}))


@keys_app.command("list")
def keys_list(tenant: str | None = typer.Option(None)) -> None:
    """List keys (ids, prefixes, tenants; never the keys)."""
    from core.db import session_scope
    from core.services import tenants
    from core.timeutil import iso

    with session_scope() as session:
        rows = [
            {
                "id": k.id,
                "tenant": t,
                "prefix": k.prefix,
                "name": k.name,
                "created_at": iso(k.created_at),
                "revoked_at": iso(k.revoked_at),
            }
            for k, t in tenants.list_api_keys(session, tenant_name=tenant)
        ]
    typer.echo(json.dumps(rows, indent=2))


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id."""
    from core.db import session_scope
    from core.errors import AppError
    from core.services import tenants

    try:
        with session_scope() as session:
            tenants.revoke_api_key(session, key_id=key_id)
    except AppError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"revoked {key_id}")


@app.command()
def demo(
    alphas: str = "0,0.05,0.1,0.2",
    epochs: int = 30,
    serve: bool = typer.Option(True, help="Keep serving the dashboard until Ctrl-C"),
) -> None:
    """Start the API and a worker (embedded mode), run an α comparison on digits, print it."""
    from softlabel.demo import run_demo

    raise typer.Exit(run_demo([float(a) for a in alphas.split(",")], epochs=epochs, serve=serve))


@app.command()
def ui(
    sweep: str | None = typer.Option(None, help="Open this sweep's page"),
    job: str | None = typer.Option(None, help="Open this job's page"),
    open_browser: bool = typer.Option(True, "--open/--no-open", help="Open a web browser"),
) -> None:
    """Print (and open) the dashboard URL of the server at SOFTLABEL_API_URL."""
    import webbrowser

    from core.config import get_settings

    base = get_settings().api_url.rstrip("/")
    path = f"/ui/sweeps/{sweep}" if sweep else f"/ui/jobs/{job}" if job else "/ui/jobs"
    typer.echo(f"{base}{path}")
    if open_browser:
        webbrowser.open(f"{base}{path}")


commands.register(app)  # submit, sweep, status, result, cancel (the HTTP client)
app.add_typer(datasets_app, name="datasets")


def main() -> None:
    """Entry point of the `softlabel` script."""
    app()


if __name__ == "__main__":
    main()
