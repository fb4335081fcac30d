"""The `esper` command: broker, topics, tail, produce, the console tools, and the main job."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from esper.compiler.artifacts.cli import artifact_app, keys_app
from esper.compiler.compile_cli import compile_command
from esper.compiler.ir.cli import app as blueprint_app
from esper.compiler.service.cli import compiler_app
from esper.compiler.wal.cli import app as wal_app
from esper.logs import configure as configure_logging
from esper.settings import load_settings
from esper.streams.exceptions import StreamsError

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


@app.command("demo")
def demo(
    steps: Annotated[int, typer.Option(help="Training steps.")] = 300,
    instance: Annotated[str, typer.Option(help="Kasmina instance id (the target of pause commands).")] = "kasmina-demo",
    pace_ms: Annotated[float, typer.Option(help="Wait between steps, so that a person can follow and pause it.")] = 20,
) -> None:
    """A demo training run: a host model with a seed slot, the Kasmina client publishing and obeying pauses."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from esper.safety.demo import run_demo
    from esper.streams.local.cluster import bootstrap_servers

    bootstrap = bootstrap_servers(load_settings().cluster())
    out.print(
        f"training [bold]{instance}[/bold]; pause it from another shell with\n"
        f"  esper produce {'leyline.control.pause'} --type leyline.PauseCommand --json pause.json\n"
        f'  (pause.json: {{"action": "PAUSE_ENTER", "target_instance": "{instance}", "reason": "ops"}})'
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("demo training", total=steps, status="")

        def on_step(step: int, loss: float, stage: object, paused: bool) -> None:
            status = f"loss {loss:.4f}  seed {getattr(stage, 'name', stage)}{'  PAUSED' if paused else ''}"
            progress.update(task, completed=step + 1, status=status)

        result = run_demo(bootstrap, steps=steps, instance_id=instance, pace_ms=pace_ms, on_step=on_step)
    out.print(
        f"{result.steps} steps: loss {result.first_loss:.4f} -> {result.last_loss:.4f}; "
        f"seed {result.final_stage.name}; {result.telemetry_queued} telemetry messages, {result.dropped} dropped; "
        f"{result.pause_commands_applied} pause commands applied"
    )
    for refusal in result.refused:
        out.print(f"gate refused: {refusal}")
    out.print("see them: esper tail leyline.safety --latest   |   esper tail leyline.telemetry --latest")


@app.command("run")
def run(steps: Annotated[int, typer.Option(help="Steps of the demo training run (0: none).")] = 300) -> None:
    """The main job: the broker (unless a cluster is configured), the topics, then a demo training run."""
    from esper.streams.admin import create_topics
    from esper.streams.local.cluster import bootstrap_servers

    broker_up()  # says so, and starts nothing, when a cluster is configured
    bootstrap = bootstrap_servers(load_settings().cluster())
    outcome = create_topics(bootstrap)
    topics_list()
    created = sum(1 for v in outcome.values() if v == "created")
    out.print(f"{len(outcome)} topics ready ({created} created) on {bootstrap}")
    if steps:
        demo(steps=steps, instance="kasmina-demo", pace_ms=20)


def main() -> None:
    try:
        app()
    except StreamsError as e:
        err.print(f"[red]error:[/red] {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
