"""`esper blueprint ...`: check blueprint files before they are submitted.

Imports stay inside the command: `esper` starts fast for every other subcommand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(help="Blueprints: validate a blueprint file (YAML or JSON).", no_args_is_help=True)


@app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="A blueprint file: .json is read as JSON, anything else as YAML.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    seed_slot: Annotated[
        bool, typer.Option("--seed-slot/--any-shape", help="Require output shape = input shape (a seed slot).")
    ] = True,
) -> None:
    """Exit 0 with every node's inferred shape, the parameter count, FLOPs per sample and activation memory;
    exit 1 with every problem, by node id."""
    from esper.compiler.exceptions import BlueprintError
    from esper.compiler.ir.canonical import content_hash
    from esper.compiler.ir.load import load_blueprint
    from esper.compiler.ir.validate import SecurityValidator
    from esper.proto import leyline_pb2 as pb

    try:
        blueprint = SecurityValidator().validate(load_blueprint(file), seed_slot=seed_slot)
    except BlueprintError as e:
        problems = [{"node": p.node, "problem": p.problem} for p in e.problems]
        if as_json:
            sys.stdout.write(json.dumps({"ok": False, "problems": problems, "more": e.more}, indent=2) + "\n")
        else:
            sys.stdout.write(f"{file}: {len(problems) + e.more} problem(s)\n")
            sys.stdout.writelines(f"  {p['node']}: {p['problem']}\n" for p in problems)
            if e.more:
                sys.stdout.write(f"  ... and {e.more} more\n")
        raise typer.Exit(1) from e
    report = {"ok": True, "sha256": content_hash(blueprint), **blueprint.to_json()}
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    rows = [("node", "op", "shape", "params", "FLOPs/sample", "bytes/sample")]
    rows.append(("input", "", str(list(blueprint.input_shape)), "", "", ""))
    rows += [
        (n.id, n.op, str(list(n.shape)), str(n.params), str(n.flops), str(n.activation_bytes)) for n in blueprint.nodes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    sys.stdout.writelines("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)
    sys.stdout.write(
        f"ok: {len(blueprint.nodes)} nodes, {pb.DType.Name(blueprint.dtype)}, output {blueprint.output} "
        f"{list(blueprint.output_shape)}\n"
        f"parameters {blueprint.params}, FLOPs per sample {blueprint.flops}, "
        f"activation memory per sample {blueprint.activation_bytes} bytes\n"
        f"sha256 {report['sha256']}\n"
    )
