"""`softlabel datasets upload|list|show|delete`: datasets through the HTTP client.

Uploads stream the file from disk in 1 MiB chunks with a progress bar (bytes and rate) on
stderr and print the dataset id; exit codes are those of softlabel.commands.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from softlabel.client import Client
from softlabel.commands import EXIT_USAGE, ApiKey, ApiUrl, _err, _Guard, _print

datasets_app = typer.Typer(help="Upload, list, inspect and delete datasets.",
                           no_args_is_help=True)


class _Progress:
    """A one-line progress bar: percent, bytes sent and the rate."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.start = quiet, time.monotonic()

    def __call__(self, sent: int, total: int) -> None:
        """Redraw the bar after a chunk."""
        if self.quiet:
            return
        elapsed = max(time.monotonic() - self.start, 1e-6)
        share = sent / total if total else 1.0
        bar = "#" * int(share * 30)
        typer.echo(f"\r[{bar:<30}] {share:6.1%} {sent / 2**20:9.1f}/{total / 2**20:.1f} MiB "
                   f"{sent / 2**20 / elapsed:7.1f} MiB/s", err=True, nl=sent >= total)


@datasets_app.command("upload")
def upload(
    file: Path = typer.Argument(..., help="CSV, Parquet or NPZ file"),
    label_column: str | None = typer.Option(None, help="CSV/Parquet: the class column"),
    name: str | None = typer.Option(None, help="A name for the dataset (default: file name)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar"),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Upload a dataset (streamed) and print its id; the same content again is the same id."""
    if not file.is_file():
        _err(f"no such file: {file}")
        raise typer.Exit(EXIT_USAGE)
    with _Guard(), Client(api_url, api_key, timeout=600.0) as client:
        doc = client.datasets.upload(file, name=name, label_column=label_column,
                                     progress=_Progress(quiet))
    typer.echo(doc["id"])


@datasets_app.command("list")
def list_(api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """List the tenant's datasets (JSON)."""
    with _Guard(), Client(api_url, api_key) as client:
        _print(client.datasets.list())


@datasets_app.command("show")
def show(dataset_id: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """One dataset's metadata (JSON): shape, layout, dtype, classes."""
    with _Guard(), Client(api_url, api_key) as client:
        _print(client.datasets.get(dataset_id))


@datasets_app.command("delete")
def delete(dataset_id: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """Delete a dataset (409 while queued or running jobs use it)."""
    with _Guard(), Client(api_url, api_key) as client:
        client.datasets.delete(dataset_id)
    typer.echo(f"deleted {dataset_id}")
