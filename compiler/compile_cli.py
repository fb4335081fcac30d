"""`esper compile FILE`: a blueprint file to a signed artifact in a store, compiled in a sandboxed worker; no Kafka.

Imports stay inside the command: `esper` starts fast for every other subcommand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["compile_command"]

STRATEGIES = ("emergency", "fast", "standard", "aggressive")


def compile_command(
    file: Annotated[Path, typer.Argument(help="A blueprint file (YAML, or JSON: see `esper blueprint validate`).")],
    strategy: Annotated[str, typer.Option(help="emergency, fast, standard or aggressive.")] = "standard",
    store: Annotated[Path | None, typer.Option(help="The artifact store (default: the artifacts_dir setting).")] = None,
    keys: Annotated[Path | None, typer.Option(help="The key ring (default: the keys_dir setting).")] = None,
    seed: Annotated[int, typer.Option(help="The seed of the initial weights.")] = 0,
) -> None:
    """Validate, compile in a sandboxed worker, prove against eager, sign and store; print the artifact id, the
    manifest and the timings as JSON. Exit 1 with the reason when the blueprint or its compile fails."""
    from esper.compiler.artifacts.keys import KeyRing
    from esper.compiler.artifacts.store import LocalStore
    from esper.compiler.compile import compile_blueprint
    from esper.compiler.exceptions import BlueprintError, CompileFailedError, KeyRingError
    from esper.compiler.ir.load import load_blueprint
    from esper.compiler.ir.validate import SecurityValidator
    from esper.compiler.sandbox import SandboxExecutor
    from esper.proto.enums import CompilationStrategy
    from esper.safety.events import Listeners
    from esper.settings import load_settings

    if strategy.lower() not in STRATEGIES:
        raise typer.BadParameter(f"{strategy!r} is not one of {', '.join(STRATEGIES)}", param_hint="--strategy")
    settings = load_settings()
    events: list[str] = []
    try:
        validated = SecurityValidator().validate(load_blueprint(file))
        ring = KeyRing(keys or settings.key_ring_dir())
        ring.signer()  # no signing key: say so before a compile is spent
        with SandboxExecutor(1) as executor:
            report = compile_blueprint(
                validated,
                CompilationStrategy[strategy.upper()],
                executor=executor,
                store=LocalStore(store or settings.artifact_store_dir()),
                ring=ring,
                sink=Listeners(lambda e: events.append(e.message)),
            )
    except BlueprintError as e:
        sys.stdout.write(f"{file}: {e}\n")
        raise typer.Exit(1) from e
    except KeyRingError as e:
        sys.stdout.write(f"{e}\n")
        raise typer.Exit(1) from e
    except CompileFailedError as e:
        sys.stdout.write(json.dumps({"ok": False, "reason": e.reason.name, "message": str(e)}, indent=2) + "\n")
        raise typer.Exit(1) from e
    sys.stdout.write(json.dumps({"ok": True, **report.to_json(), "events": events}, indent=2) + "\n")
