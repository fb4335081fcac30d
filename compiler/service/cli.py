"""`esper compiler run` (the service, until SIGINT/SIGTERM) and `esper compiler status` (its health JSON)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from esper.compiler.service.health import status_command
from esper.safety.exceptions import ConfigError

__all__ = ["compiler_app"]

log = logging.getLogger(__name__)

compiler_app = typer.Typer(help="Tezzeret, the compile service: run it, ask how it is.", no_args_is_help=True)
compiler_app.command("status")(status_command)


@compiler_app.command("run")
def run_command(
    config: Annotated[
        Path | None,
        typer.Option(help="The tezzeret: block (YAML, TOML or JSON; examples/tezzeret.yaml). Env: ESPER_TEZZERET_*."),
    ] = None,
    instance: Annotated[str | None, typer.Option(help="Instance id (service.instance_id): one per process.")] = None,
    port: Annotated[int | None, typer.Option(help="Port of /metrics and /health/tezzeret (service.http_port).")] = None,
) -> None:
    """Consume leyline.blueprints, leyline.compilation.requests and leyline.compilation.emergency; answer each
    request once on leyline.compilation.results (artifacts on leyline.kernels, audit on leyline.audit)."""
    from esper.compiler.service.app import TezzeretService
    from esper.compiler.service_config import TezzeretConfig
    from esper.settings import load_settings
    from esper.streams.local.cluster import bootstrap_servers

    try:
        loaded = TezzeretConfig.load(config) if config is not None else TezzeretConfig.load()
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    overrides = {k: v for k, v in {"instance_id": instance, "http_port": port}.items() if v is not None}
    if overrides:
        loaded = loaded.model_copy(update={"service": loaded.service.model_copy(update=overrides)})
    settings = load_settings()
    service = TezzeretService(loaded, settings, bootstrap_servers(settings.cluster()))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: service.stopping.set())
    service.start()
    typer.echo(
        f"tezzeret {service.instance_id} running; health: {service.http.url if service.http else '-'}/health/tezzeret",
        err=True,
    )
    service.wait()
    service.stop()
    if service.fatal:
        typer.echo(f"tezzeret stopped: {service.fatal}", err=True)
        sys.exit(1)
