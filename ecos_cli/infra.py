"""`ecos infra ...`: start/stop the real services (S3 server, Prefect server, workers).

A thin layer over infra/services.py (stdlib only), imported lazily in each command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

infra_app = typer.Typer(
    help="Start and stop the local services: S3 store (rclone), Prefect server, workers.", no_args_is_help=True
)

ServicesArg = typer.Argument(None, help="s3, prefect, worker, gpu-worker, watcher, or all (default: s3 prefect worker; "
                            "the watcher and the GPU worker only by name).", show_default=False)  # fmt: skip


def _services():
    """infra.services from the repo checkout (infra/ is not an installed package)."""
    try:
        from infra import services
    except ImportError:
        root = Path(__file__).resolve().parent.parent
        if not (root / "infra" / "services.py").is_file():
            raise
        sys.path.insert(0, str(root))
        from infra import services
    return services


def _run(fn) -> None:
    services = _services()
    try:
        fn(services)
    except services.ServiceError as err:
        typer.echo(f"infra: error: {err}", err=True)
        raise typer.Exit(1) from None


@infra_app.command("up")
def up(services: list[str] | None = ServicesArg) -> None:
    """Start services (all = s3, prefect, worker) and wait until each is ready. Workers and
    the watcher run under a supervisor that restarts them when they die."""
    _run(lambda s: s.up(services or None))


@infra_app.command("down")
def down(services: list[str] | None = ServicesArg) -> None:
    """Stop services by their recorded PID (default: all)."""
    _run(lambda s: s.down(services or None))


@infra_app.command("status")
def status() -> None:
    """Each service: running/stopped, pid, URL, log file; a supervised one's restarts, the
    watcher's last sweep and its current errors."""
    _run(lambda s: s.status())


@infra_app.command("env")
def env(running: bool = typer.Option(False, "--running", help="Only variables of services that are running.")) -> None:
    """Print `export K=V` lines for clients and flows: eval "$(ecos infra env)"."""
    _run(lambda s: typer.echo("\n".join(s.env_lines(running_only=running))))
