"""The `esper` command: broker, topics, tail, produce, the console tools, and the main job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from esper.compiler.artifacts.cli import artifact_app, keys_app
from esper.compiler.compile_cli import compile_command
from esper.compiler.ir.cli import app as blueprint_app
from esper.compiler.service.cli import compiler_app
from esper.compiler.wal.cli import app as wal_app
from esper.logs import configure as configure_logging
from esper.projections.app import run_command as projections_run
from esper.projections.cli import app as projections_commands
from esper.proto import leyline_pb2 as pb
from esper.settings import load_settings
from esper.streams.exceptions import StreamsError

if TYPE_CHECKING:
    from rich.progress import Progress

    from esper.compiler.ir.validate import ValidatedBlueprint
    from esper.compiler.service_config import TezzeretConfig
    from esper.safety.demo import DemoArtifact

app = typer.Typer(
    help="Esper on Kafka: Tezzeret, Kasmina and their Leyline topics.",
    no_args_is_help=True,
    add_completion=False,
)
broker_app = typer.Typer(help="The project's local Apache Kafka broker (KRaft, single node).", no_args_is_help=True)
topics_app = typer.Typer(help="The Leyline topic registry.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
# Subcommand groups of the other packages are registered here, one line each.
app.add_typer(wal_app, name="wal")
app.add_typer(blueprint_app, name="blueprint")
app.add_typer(artifact_app, name="artifact")
app.add_typer(keys_app, name="keys")
app.add_typer(compiler_app, name="compiler")
app.command("compile")(compile_command)
app.add_typer(projections_commands)  # esper replay, esper status
app.add_typer(projections_run, name="projections")  # esper projections run

err = Console(stderr=True)
out = Console()


@app.callback()
def _main(
    log_level: Annotated[
        str, typer.Option(envvar="ESPER_LOG_LEVEL", help="DEBUG, INFO, WARNING (default) or ERROR, on stderr.")
    ] = "WARNING",
) -> None:
    """Esper on Kafka: Tezzeret, Kasmina and their Leyline topics."""
    try:
        configure_logging(log_level)
    except ValueError as e:
        raise _fail(str(e)) from e


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


# ---------------------------------------------------------------- broker


@broker_app.command("up")
def broker_up(timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 120.0) -> None:
    """Provision Kafka from Maven (once), format storage (once), start the broker and wait until it answers."""
    from esper.streams.local.broker import LocalBroker

    settings = load_settings()
    if settings.bootstrap_servers:
        out.print(f"using the configured cluster {settings.bootstrap_servers}; no local broker started")
        return
    broker = LocalBroker(settings.cluster())
    started = time.monotonic()
    with err.status("starting Kafka (the first run resolves the jars from Maven Central)..."):
        status = broker.up(timeout_s=timeout)
    out.print(f"Kafka {settings.kafka_version} ready in {time.monotonic() - started:.1f}s (pid {status.pid})")
    out.print(f"bootstrap servers: {status.bootstrap_servers}")
    out.print(f"console tools: {broker.dist.bin}")


@broker_app.command("down")
def broker_down() -> None:
    """Stop the local broker with a controlled shutdown; its data stays for the next `up`."""
    from esper.streams.local.broker import LocalBroker

    stopped = LocalBroker(load_settings().cluster()).down()
    out.print("broker stopped" if stopped else "no local broker was running")


@broker_app.command("status")
def broker_status() -> None:
    """Show whether the local broker runs and answers (exit 1 when it does not)."""
    from esper.streams.local.broker import LocalBroker

    settings = load_settings()
    if settings.bootstrap_servers:
        from esper.streams.admin import ensure_reachable

        ensure_reachable(settings.bootstrap_servers)
        out.print(f"configured cluster {settings.bootstrap_servers} answers")
        return
    status = LocalBroker(settings.cluster()).status()
    print(
        json.dumps(
            {
                "running": status.running,
                "ready": status.ready,
                "pid": status.pid,
                "bootstrap_servers": status.bootstrap_servers,
                "data_dir": str(status.data_dir),
                "log_file": str(status.log_file),
            },
            indent=2,
        )
    )
    if not status.ready:
        raise typer.Exit(1)


@broker_app.command("logs")
def broker_logs(
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines.")] = 60,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
) -> None:
    """Print the end of the broker's log."""
    from esper.streams.local.broker import LocalBroker

    broker = LocalBroker(load_settings().cluster())
    if not follow:
        out.print(broker.log_tail(lines), markup=False, highlight=False)
        return
    os.execvp("tail", ["tail", "-n", str(lines), "-F", str(broker.log_file)])


@broker_app.command("tools")
def broker_tools() -> None:
    """List the console-tool wrappers (kafka-console-producer, kafka-topics, ...) and where they are."""
    from esper.streams.local.kafka_dist import CONSOLE_TOOLS, KafkaDistribution

    settings = load_settings()
    dist = KafkaDistribution.in_home(settings.home, settings.kafka_version)
    dist.provision()
    for name in CONSOLE_TOOLS:
        out.print(str(dist.bin / name))


@app.command("kafka", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def kafka_tool(
    ctx: typer.Context,
    tool: Annotated[str, typer.Argument(help="kafka-topics, kafka-console-producer, kafka-consumer-groups, ...")],
) -> None:
    """Run a Kafka console tool from the same classpath as the broker: `esper kafka kafka-topics --list ...`."""
    from esper.streams.local.kafka_dist import KafkaDistribution

    settings = load_settings()
    try:
        script = KafkaDistribution.in_home(settings.home, settings.kafka_version).tool(tool)
    except KeyError as e:
        raise _fail(str(e.args[0])) from e
    os.execv(str(script), [str(script), *ctx.args])


# ---------------------------------------------------------------- topics


@topics_app.command("create")
def topics_create() -> None:
    """Create every registered topic that does not exist yet (idempotent)."""
    from esper.streams.admin import create_topics
    from esper.streams.local.cluster import bootstrap_servers

    outcome = create_topics(bootstrap_servers(load_settings().cluster()))
    for name, what in outcome.items():
        out.print(f"{name}: {what}")


@topics_app.command("list")
def topics_list() -> None:
    """The topic registry: name, message types, key, partitions, configuration."""
    from esper.streams.topics import ALL_TOPICS

    table = Table("topic", "messages", "key", "partitions", "config")
    for spec in ALL_TOPICS:
        table.add_row(
            spec.name,
            ", ".join(spec.type_names),
            spec.key,
            str(spec.partitions),
            " ".join(f"{k}={v}" for k, v in spec.config.items()),
        )
    out.print(table)


# ---------------------------------------------------------------- records


@app.command("tail")
def tail(
    topic: str,
    from_beginning: Annotated[bool, typer.Option("--from-beginning/--latest", help="Where to start.")] = True,
    max_records: Annotated[int, typer.Option("--max", help="Stop after this many records (0: no limit).")] = 0,
    idle_timeout: Annotated[
        float, typer.Option(help="Stop after this many seconds without a record (0: never).")
    ] = 0.0,
) -> None:
    """Print the records of a topic as JSON lines, decoded (undecodable ones show their error)."""
    from esper.streams.local.cluster import bootstrap_servers
    from esper.streams.tail import tail_records

    for line in tail_records(
        bootstrap_servers(load_settings().cluster()),
        topic,
        from_beginning=from_beginning,
        max_records=max_records,
        idle_timeout_s=idle_timeout,
    ):
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


@app.command("produce")
def produce(
    topic: str,
    type_name: Annotated[str, typer.Option("--type", help="Full message name, e.g. leyline.PauseCommand.")],
    json_file: Annotated[Path, typer.Option("--json", help="The message in proto3 JSON ('-' for stdin).")],
    key: Annotated[str | None, typer.Option(help="Record key.")] = None,
    correlation_id: Annotated[str, typer.Option(help="Correlation id (blueprint or job).")] = "",
    as_json: Annotated[bool, typer.Option("--as-json", help="Send the JSON mapping, not protobuf bytes.")] = False,
) -> None:
    """Send one message, wait for the acknowledgement, print where it landed."""
    from esper.streams.admin import ensure_topic
    from esper.streams.envelope import JSON, MESSAGE_TYPES, PROTOBUF, message_from_json
    from esper.streams.exceptions import DecodeError
    from esper.streams.local.cluster import bootstrap_servers
    from esper.streams.producer import LeylineProducer
    from esper.streams.topics import topic_spec

    cls = MESSAGE_TYPES.get(type_name)
    if cls is None:
        raise _fail(f"unknown message type {type_name!r}; known: {', '.join(sorted(MESSAGE_TYPES))}")
    spec = topic_spec(topic)
    if spec is not None and type_name not in spec.type_names:
        raise _fail(f"topic {topic} carries {', '.join(spec.type_names)}, not {type_name}")
    try:
        text = sys.stdin.read() if str(json_file) == "-" else json_file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(f"cannot read {json_file}: {e}") from e
    try:
        message = message_from_json(text, cls)
    except DecodeError as e:
        raise _fail(f"{json_file}: {e}") from e
    bootstrap = bootstrap_servers(load_settings().cluster())
    ensure_topic(bootstrap, topic)
    producer = LeylineProducer(bootstrap, producer_id="esper-cli")
    envelope = producer.envelope_for(message, correlation_id=correlation_id, content_type=JSON if as_json else PROTOBUF)
    msg = producer.send_sync(topic, message, key, envelope=envelope)
    print(
        json.dumps(
            {
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
                "message_id": envelope.message_id,
            }
        )
    )


# ---------------------------------------------------------------- the main job


# The seeds `esper run` asks Tezzeret for, in order: the first one compiled is grafted into the demo's slot.
EXAMPLE_SEEDS = tuple(Path("examples/blueprints") / f"{name}.yaml" for name in ("mlp", "attention", "conv"))
TEZZERET_LOG = "tezzeret.log"  # under <home>/logs
_HEALTHY_WITHIN_S = 180.0  # a starting service recovers its WAL and warms its sandbox workers (some 10-40 s)
_STOP_GRACE_S = 30.0  # a stopping service finishes its transactions and closes its lanes (some 10 s)


@app.command("demo")
def demo(
    steps: Annotated[int, typer.Option(help="Training steps.")] = 300,
    instance: Annotated[str, typer.Option(help="Kasmina instance id (the target of pause commands).")] = "kasmina-demo",
    pace_ms: Annotated[float, typer.Option(help="Wait between steps, so that a person can follow and pause it.")] = 20,
    compile_seeds: Annotated[
        bool, typer.Option("--compile/--plain", help="Graft a seed Tezzeret compiled (--plain: the plain module).")
    ] = True,
    blueprint: Annotated[
        list[Path] | None,
        typer.Option(help="A seed blueprint to compile (repeatable; default the examples, mlp first)."),
    ] = None,
    tezzeret_url: Annotated[
        str | None,
        typer.Option(envvar="ESPER_TEZZERET_HEALTH_URL", help="Tezzeret's health URL (default: its configured port)."),
    ] = None,
    compile_timeout: Annotated[float, typer.Option(help="Seconds to wait for Tezzeret's answers.")] = 300.0,
) -> None:
    """A demo training run: a host model with a seed slot, the Kasmina client publishing and obeying pauses. With
    --compile, the seed blueprints that fit the slot go to Tezzeret first, and the first compiled one is verified
    and grafted into the slot; a failure, or no Tezzeret, leaves the plain module."""
    from esper.safety.demo import run_demo
    from esper.streams.local.cluster import bootstrap_servers

    bootstrap = bootstrap_servers(load_settings().cluster())
    compiled: _Compiled | None = None
    plain_because = "--plain"
    if compile_seeds:
        url = tezzeret_url or _tezzeret_health_url()
        compiled, plain_because = _compile_seed(bootstrap, list(blueprint or EXAMPLE_SEEDS), url, compile_timeout)
    out.print(
        f"training [bold]{instance}[/bold]; pause it from another shell with\n"
        f"  esper produce {'leyline.control.pause'} --type leyline.PauseCommand --json pause.json\n"
        f'  (pause.json: {{"action": "PAUSE_ENTER", "target_instance": "{instance}", "reason": "ops"}})'
    )
    with _progress() as progress:
        task = progress.add_task("demo training", total=steps, status="")

        def on_step(step: int, loss: float, stage: object, paused: bool) -> None:
            status = f"loss {loss:.4f}  seed {getattr(stage, 'name', stage)}{'  PAUSED' if paused else ''}"
            progress.update(task, completed=step + 1, status=status)

        result = run_demo(
            bootstrap,
            steps=steps,
            instance_id=instance,
            pace_ms=pace_ms,
            on_step=on_step,
            artifact=compiled.artifact if compiled is not None else None,
        )
    out.print(
        f"{result.steps} steps: loss {result.first_loss:.4f} -> {result.last_loss:.4f}; "
        f"seed {result.final_stage.name}; {result.telemetry_queued} telemetry messages, {result.dropped} dropped; "
        f"{result.pause_commands_applied} pause commands applied"
    )
    for refusal in result.refused:
        out.print(f"gate refused: {refusal}")
    out.print("see them: esper tail leyline.safety --latest   |   esper tail leyline.telemetry --latest")
    if compiled is not None and result.graft is not None:
        report, answer = result.graft, compiled.result
        how = "warm" if report.warm else f"cold, compiled here ({'; '.join(report.mismatches)})"
        out.print(
            f"seed: artifact {report.artifact_id} ({compiled.name}) grafted, tier {report.tier}, "
            f"answered from {pb.CacheLevel.Name(answer.cache_level)}, {how}; {result.final_stage.name}",
            soft_wrap=True,
        )
    else:
        why = f"artifact refused: {result.graft_error}" if result.graft_error else plain_because
        out.print(f"seed: the plain module ({why}); {result.final_stage.name}", soft_wrap=True)


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    return Progress(*columns, console=err)


@dataclass(frozen=True)
class _Compiled:
    name: str  # the blueprint file's
    result: pb.CompilationResult
    artifact: DemoArtifact


def _compile_seed(bootstrap: str, files: list[Path], url: str, timeout_s: float) -> tuple[_Compiled | None, str]:
    """Send the blueprints that fit the demo's slot to Tezzeret, showing its answers as they come; the first one
    (in the order given) compiled, or None and why the seed stays the plain module."""
    from esper.compiler.artifacts.keys import KeyRing
    from esper.compiler.artifacts.store import open_store
    from esper.compiler.ir.cli import Sent, submit_blueprints
    from esper.compiler.service.health import fetch_health
    from esper.safety.demo import DemoArtifact

    try:
        code, health = fetch_health(url, 5.0)
    except (OSError, ValueError) as e:
        return None, f"no Tezzeret answers at {url}: {e}"
    if code != 200:
        return None, f"Tezzeret is {health.get('status')} ({'; '.join(map(str, health.get('reasons', [])))})"
    fits = _fitting(files)
    if not fits:
        return None, "no blueprint fits the slot"
    names = [f.name for f, _ in fits]
    with _progress() as progress:
        task = progress.add_task("Tezzeret compiling", total=len(fits), status=", ".join(names))
        by_request: dict[str, str] = {}

        def on_sent(sent: Sent) -> None:
            by_request[sent.request_id] = names[len(by_request)]  # sent in the order given

        def on_result(sent: Sent, r: pb.CompilationResult) -> None:
            name = by_request[sent.request_id]
            progress.advance(task)
            progress.update(task, status=f"{name} answered")
            progress.console.print(f"  {name}: {_describe(r)}")

        answers = submit_blueprints(
            bootstrap, [(v, None) for _, v in fits], wait_s=timeout_s, on_sent=on_sent, on_result=on_result
        )
    for sent, r in answers:
        if r is None:
            out.print(f"  {by_request[sent.request_id]}: no answer within {timeout_s:g} s (request {sent.request_id})")
    done = [(by_request[sent.request_id], r) for sent, r in answers if r is not None and r.success]
    if not done:
        return None, "Tezzeret compiled none of them"
    name, first = done[0]
    settings = load_settings()
    store = open_store(_tezzeret_config().service.store or str(settings.artifact_store_dir()))
    ring = KeyRing(settings.key_ring_dir())
    return _Compiled(name, first, DemoArtifact(store, first.artifact_id, ring)), ""


def _fitting(files: list[Path]) -> list[tuple[Path, ValidatedBlueprint]]:
    """The files whose blueprint is valid and fits the demo's slot (batch x SLOT_WIDTH float32 in and out)."""
    from esper.compiler.exceptions import BlueprintError
    from esper.compiler.ir.load import load_blueprint
    from esper.compiler.ir.validate import SecurityValidator
    from esper.safety.demo import SLOT_WIDTH

    fits = []
    for file in files:
        try:
            validated = SecurityValidator().validate(load_blueprint(file), seed_slot=True)
        except BlueprintError as e:
            out.print(f"  {file.name}: skipped, not a valid seed ({e})")
            continue
        if list(validated.input_shape) != [-1, SLOT_WIDTH] or validated.dtype != pb.DTYPE_FLOAT32:
            shape, dtype = list(validated.input_shape), pb.DType.Name(validated.dtype)
            out.print(f"  {file.name}: skipped, takes {shape} {dtype}; the slot is batch x {SLOT_WIDTH} float32")
            continue
        fits.append((file, validated))
    return fits


def _describe(r: pb.CompilationResult) -> str:
    from esper.proto.enums import CompilationStrategy

    tier = CompilationStrategy(r.strategy).name if r.strategy else "no tier"
    if not r.success:
        return f"FAILED at {tier}: {pb.FailureReason.Name(r.failure_reason)} {r.error}".rstrip()
    return f"{tier} in {r.total_ms / 1000:.1f} s ({pb.CacheLevel.Name(r.cache_level)}), artifact {r.artifact_id[:16]}"


def _tezzeret_config() -> TezzeretConfig:
    from esper.compiler.service_config import TezzeretConfig
    from esper.safety.exceptions import ConfigError

    try:
        return TezzeretConfig.load()
    except ConfigError as e:
        raise _fail(f"Tezzeret's configuration: {e}") from e


def _tezzeret_health_url() -> str:
    """Where the configured Tezzeret (ESPER_TEZZERET_SERVICE__HTTP_HOST/PORT) answers on this machine."""
    from esper.compiler.service.health import HEALTH_PATH

    svc = _tezzeret_config().service
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(svc.http_host, svc.http_host)
    return f"http://{f'[{host}]' if ':' in host else host}:{svc.http_port}{HEALTH_PATH}"


@contextmanager
def _tezzeret() -> Iterator[str]:
    """Tezzeret's health URL for the duration: the one that already answers there, else one started here (`esper
    compiler run`, its log in <home>/logs/tezzeret.log) once it is healthy, stopped at the end whatever happens."""
    from esper.compiler.service.health import fetch_health

    url = os.environ.get("ESPER_TEZZERET_HEALTH_URL") or _tezzeret_health_url()
    try:
        _, health = fetch_health(url, 2.0)
    except (OSError, ValueError):
        pass
    else:
        out.print(f"Tezzeret {health.get('instance_id', '?')} already answers at {url}: using it, none started")
        yield url
        return
    command = ["--log-level", "INFO", "compiler", "run"]
    with _background("Tezzeret", command, TEZZERET_LOG, url, "its sandbox workers warm up"):
        yield url


@contextmanager
def _projections() -> Iterator[str]:
    """The live projections app's dashboard URL for the duration: the app that already answers on its port, else
    one started here (`esper projections run`, its log in <home>/logs/projections.log), stopped at the end."""
    from esper.compiler.service.health import fetch_health
    from esper.projections.app import DEFAULT_WEB_PORT

    base = os.environ.get("ESPER_PROJECTIONS_URL", f"http://127.0.0.1:{DEFAULT_WEB_PORT}")
    try:
        code, _ = fetch_health(f"{base}/projections", 2.0)
    except (OSError, ValueError):
        code = 0
    if code == 200:
        out.print(f"the projections app already answers at {base}: using it, none started")
        yield f"{base}/dashboard"
        return
    command = ["projections", "run", "--web-port", base.rsplit(":", 1)[1]]
    with _background("projections", command, "projections.log", f"{base}/projections", "its tables open"):
        yield f"{base}/dashboard"


@contextmanager
def _background(name: str, args: list[str], log_name: str, url: str, why: str) -> Iterator[None]:
    """`esper ARGS` as a subprocess for the duration (its log in <home>/logs/LOG_NAME), once `url` answers 200;
    stopped at the end whatever happens."""
    log_path = load_settings().home / "logs" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        # a session of its own: a Ctrl-C reaches this process alone, which then stops the service in order
        service = subprocess.Popen(
            [sys.executable, "-m", "esper.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        out.print(f"{name} starting (pid {service.pid}); its log: {log_path}")
        started = time.monotonic()
        with err.status(f"waiting for {name} ({why})..."):
            _await_healthy(service, url, started + _HEALTHY_WITHIN_S, log_path, name)
        out.print(f"{name} ready in {time.monotonic() - started:.1f}s: {url}")
        yield
    finally:
        _stop(service)
        out.print(f"{name} stopped (exit {service.returncode}); its log: {log_path}")


def _await_healthy(service: subprocess.Popen[bytes], url: str, deadline: float, log_path: Path, name: str) -> None:
    from esper.compiler.service.health import fetch_health

    last = "no answer"
    while time.monotonic() < deadline:
        if service.poll() is not None:
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-10:])
            raise _fail(f"{name} exited ({service.returncode}) before it was healthy; {log_path} ends:\n{tail}")
        try:
            code, health = fetch_health(url, 2.0)
        except (OSError, ValueError) as e:
            last = str(e)
        else:
            if code == 200:
                return
            last = f"{health.get('status')}: {'; '.join(map(str, health.get('reasons', [])))}"
        time.sleep(0.5)
    raise _fail(f"{url} was not healthy in time ({last}); see {log_path}")


def _stop(service: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after the grace period (or at a second Ctrl-C)."""
    if service.poll() is not None:
        return
    service.send_signal(signal.SIGTERM)
    try:
        service.wait(_STOP_GRACE_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        service.kill()
        service.wait()


@app.command("run")
def run(
    steps: Annotated[int, typer.Option(help="Steps of the demo training run (0: none).")] = 300,
    compile_timeout: Annotated[float, typer.Option(help="Seconds to wait for Tezzeret's answers.")] = 300.0,
) -> None:
    """The main job: the broker (unless a cluster is configured), the topics, then Tezzeret (unless one answers
    already) and a demo training run whose seed Tezzeret compiled."""
    from esper.streams.admin import create_topics
    from esper.streams.local.cluster import bootstrap_servers

    broker_up()  # says so, and starts nothing, when a cluster is configured
    bootstrap = bootstrap_servers(load_settings().cluster())
    outcome = create_topics(bootstrap)
    topics_list()
    created = sum(1 for v in outcome.values() if v == "created")
    out.print(f"{len(outcome)} topics ready ({created} created) on {bootstrap}")
    if not steps:
        return
    with _projections() as dashboard, _tezzeret() as url:
        out.print(f"the dashboard: {dashboard}  (JSON: {dashboard.removesuffix('/dashboard')}/projections)")
        demo(
            steps=steps,
            instance="kasmina-demo",
            pace_ms=20,
            compile_seeds=True,
            blueprint=None,
            tezzeret_url=url,
            compile_timeout=compile_timeout,
        )


def main() -> None:
    try:
        app()
    except StreamsError as e:
        err.print(f"[red]error:[/red] {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
