"""`esper blueprint ...`: check blueprint files, and submit them to Tezzeret.

Imports stay inside the functions: `esper` starts fast for every other subcommand. `submit_blueprints` is the one
way a blueprint goes to Tezzeret and its answers come back (the submit command and the demo of `esper run`).
"""

from __future__ import annotations

import getpass
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from esper.compiler.ir.validate import ValidatedBlueprint
    from esper.proto import leyline_pb2 as pb

__all__ = ["Sent", "app", "submit_blueprints"]

app = typer.Typer(
    help="Blueprints: validate a blueprint file (YAML or JSON), submit it to Tezzeret.", no_args_is_help=True
)

# Results are read from this long before the submission, so a service whose clock is behind ours is still heard.
_CLOCK_SKEW_MS = 10_000
# Only what the service's transactions committed: an aborted compile's result is never seen.
_READ_COMMITTED: dict[str, Any] = {"isolation.level": "read_committed"}


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
    from esper.compiler.ir.canonical import content_hash
    from esper.proto import leyline_pb2 as pb

    blueprint = _load_valid(file, seed_slot=seed_slot, as_json=as_json)
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


def _load_valid(file: Path, *, seed_slot: bool, as_json: bool) -> ValidatedBlueprint:
    """The blueprint in `file`, validated; when it is not one, every problem is printed, by node id, and exit 1."""
    from esper.compiler.exceptions import BlueprintError
    from esper.compiler.ir.load import load_blueprint
    from esper.compiler.ir.validate import SecurityValidator

    try:
        return SecurityValidator().validate(load_blueprint(file), seed_slot=seed_slot)
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


@app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(help="A blueprint file, read and validated as `validate` does.")],
    strategy: Annotated[
        str | None, typer.Option(help="emergency, fast, standard or aggressive (default: the service chooses).")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="Higher is compiled first (default 0).")] = None,
    deadline_ms: Annotated[
        int | None, typer.Option("--deadline-ms", help="Milliseconds from now by which it must be answered.")
    ] = None,
    requestor: Annotated[str | None, typer.Option(help="Who asks (default cli:<user>).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the CompilationResult and print it.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits for the result.")] = 600.0,
) -> None:
    """Validate FILE, then send it to Tezzeret: as a BlueprintIR on leyline.blueprints (the service's default tier),
    or, with --strategy, --priority, --deadline-ms or --requestor, as a CompilationRequest carrying it on
    leyline.compilation.requests. Prints where it landed and its request id as one JSON line. With --wait, then
    prints the CompilationResult of that request id (proto3 JSON, one line): exit 0 when it succeeded, 1 when it
    failed, 3 when none came within --timeout. An invalid file exits 1 before anything is sent."""
    from google.protobuf import json_format

    from esper.proto import leyline_pb2 as pb
    from esper.proto.enums import CompilationStrategy
    from esper.settings import load_settings
    from esper.streams.local.cluster import bootstrap_servers

    tier = None
    if strategy is not None:
        try:
            tier = CompilationStrategy[strategy.upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in CompilationStrategy)
            raise typer.BadParameter(f"{strategy!r} is not one of {names}", param_hint="--strategy") from None
    blueprint = _load_valid(file, seed_slot=True, as_json=False)
    ir = blueprint.ir
    request: pb.CompilationRequest | None = None
    if any(option is not None for option in (strategy, priority, deadline_ms, requestor)):
        request = pb.CompilationRequest(
            request_id=uuid.uuid4().hex,
            blueprint_id=ir.blueprint_id,
            strategy=int(tier or 0),  # type: ignore[arg-type]  # an int is what the field holds
            priority=priority or 0,
            requestor=requestor if requestor is not None else f"cli:{_user()}",
            blueprint=ir,
            deadline_ms=deadline_ms or 0,
        )
        request.requested_at.GetCurrentTime()

    def print_sent(sent: Sent) -> None:
        line = {"topic": sent.topic, "partition": sent.partition, "offset": sent.offset, "request_id": sent.request_id}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    [(sent, result)] = submit_blueprints(
        bootstrap_servers(load_settings().cluster()),
        [(blueprint, request)],
        wait_s=timeout if wait else None,
        on_sent=print_sent,
    )
    if not wait:
        return
    if result is None:
        sys.stderr.write(f"no CompilationResult for request {sent.request_id} within {timeout:g} s\n")
        raise typer.Exit(3)
    sys.stdout.write(json_format.MessageToJson(result, preserving_proto_field_name=True, indent=None) + "\n")
    if not result.success:
        raise typer.Exit(1)


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no password entry (a bare container)
        return "unknown"


@dataclass(frozen=True)
class Sent:
    """Where a submission landed, and the request id its CompilationResult carries."""

    topic: str
    partition: int
    offset: int
    request_id: str


def submit_blueprints(
    bootstrap: str,
    submissions: Sequence[tuple[ValidatedBlueprint, pb.CompilationRequest | None]],
    *,
    wait_s: float | None = None,
    on_sent: Callable[[Sent], None] | None = None,
    on_result: Callable[[Sent, pb.CompilationResult], None] | None = None,
) -> list[tuple[Sent, pb.CompilationResult | None]]:
    """Send each blueprint to Tezzeret: its BlueprintIR on leyline.blueprints (answered under the record's message
    id), or the CompilationRequest given with it on leyline.compilation.requests (answered under its request_id),
    keyed by blueprint id (an anonymous one by its content hash). With `wait_s`, then read leyline.compilation.results
    (read_committed, from before the first send, so no answer slips by) until every request has its first result or
    `wait_s` seconds have passed. Returns (Sent, result or None) in the order given; `on_sent` and `on_result` hear
    of each as it happens."""
    from esper.compiler.ir.canonical import content_hash
    from esper.proto import leyline_pb2 as pb
    from esper.streams.admin import ensure_topic
    from esper.streams.consumer import LeylineConsumer, Record
    from esper.streams.producer import LeylineProducer
    from esper.streams.topics import BLUEPRINTS, COMPILATION_REQUESTS, COMPILATION_RESULTS

    topics = {COMPILATION_REQUESTS.name if r is not None else BLUEPRINTS.name for _, r in submissions}
    for topic in sorted(topics):
        ensure_topic(bootstrap, topic)
    results = None
    if wait_s is not None:
        since_ms = time.time_ns() // 1_000_000 - _CLOCK_SKEW_MS
        results = LeylineConsumer.from_time(
            bootstrap,
            f"esper-cli-submit-{uuid.uuid4().hex[:8]}",
            COMPILATION_RESULTS.name,
            since_ms,
            **_READ_COMMITTED,
        )
    try:
        sent: list[Sent] = []
        producer = LeylineProducer(bootstrap, producer_id="esper-cli")
        try:
            for blueprint, request in submissions:
                message = request if request is not None else blueprint.ir
                topic = COMPILATION_REQUESTS.name if request is not None else BLUEPRINTS.name
                envelope = producer.envelope_for(message)
                key = blueprint.ir.blueprint_id or content_hash(blueprint)
                landed = producer.send_sync(topic, message, key, envelope=envelope)
                # The service's contract: a blueprint record is answered under its message id, a request under its id.
                request_id = request.request_id if request is not None else envelope.message_id
                sent.append(Sent(topic, landed.partition() or 0, landed.offset() or 0, request_id))
                if on_sent is not None:
                    on_sent(sent[-1])
        finally:
            producer.close()
        if results is None or wait_s is None:
            return [(s, None) for s in sent]
        by_id = {s.request_id: s for s in sent}
        found: dict[str, pb.CompilationResult] = {}

        def match(record: Record) -> None:
            result = record.message
            if not isinstance(result, pb.CompilationResult) or result.request_id not in by_id:
                return
            if result.request_id not in found:  # the first answer counts (a redelivery may follow)
                found[result.request_id] = result
                if on_result is not None:
                    on_result(by_id[result.request_id], result)

        deadline = time.monotonic() + wait_s
        while len(found) < len(by_id) and (left := deadline - time.monotonic()) > 0:
            results.poll_once(match, timeout_s=min(0.5, left))
    finally:
        if results is not None:
            results.close()
    return [(s, found.get(s.request_id)) for s in sent]
