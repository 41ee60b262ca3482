"""The ``mlrelease`` command; the release commands (promote, rollback, watch, ...) build on it."""

from __future__ import annotations

import typer

from automation.engine import EngineMissing, pulumi_command

app = typer.Typer(help="Release control plane for production ML models.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """Release control plane for production ML models."""


@app.command()
def version() -> None:
    """Print the versions of mlrelease and of the pinned Pulumi engine it drives."""
    from importlib.metadata import version as package_version

    try:
        engine = str(pulumi_command().version)
    except EngineMissing as exc:
        typer.echo(f"mlrelease: error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"mlrelease {package_version('mlrelease')}, pulumi engine v{engine}")


def main() -> None:
    """Entry point of the ``mlrelease`` console script."""
    app()
