"""Tezzeret's health: a pure report of a service snapshot, the HTTP endpoint that serves it with /metrics, and the
`esper compiler status` command that reads it.

  `ServiceSnapshot`  frozen: what the service knows about itself at one moment;
  `health_report`    pure: (HTTP status, JSON body) of a snapshot. 503 "unavailable" when it cannot compile (the WAL
                     unusable, no ready worker, Kafka not answering, a breaker OPEN or FORCED_OPEN), 200 "degraded"
                     while it compiles with less (conservative mode, a breaker HALF_OPEN), else 200 "ok";
  `HealthServer`     aiohttp in its own thread and event loop: GET /metrics and GET /health/tezzeret;
  `fetch_health`, `status_command`  the client side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import typer
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from esper.compiler.service.metrics import TezzeretMetrics
from esper.proto.enums import CircuitState

__all__ = [
    "DEFAULT_HEALTH_URL",
    "HEALTH_PATH",
    "METRICS_PATH",
    "HealthServer",
    "ServiceSnapshot",
    "fetch_health",
    "health_report",
    "status_command",
]

log = logging.getLogger(__name__)

HEALTH_PATH = "/health/tezzeret"
METRICS_PATH = "/metrics"
DEFAULT_HEALTH_URL = f"http://127.0.0.1:8790{HEALTH_PATH}"
_MAX_BODY = 1 << 20  # a health report is a few KiB; anything larger is not one


@dataclass(frozen=True)
class ServiceSnapshot:
    """The service at one moment. `wal`: path, epoch, unsettled, segments, usable (bool), recovery_ms; `queue`:
    depth, running, waiting; each of `workers`: pid, ready (bool), cpu_only, lane."""

    instance_id: str
    breakers: Mapping[str, CircuitState]
    conservative_active: bool
    conservative_causes: tuple[str, ...]
    wal: Mapping[str, object]
    queue: Mapping[str, object]
    workers: tuple[Mapping[str, object], ...]
    kafka_ok: bool
    kafka_error: str
    uptime_s: float


_DOWN = frozenset({CircuitState.OPEN, CircuitState.FORCED_OPEN})


def health_report(s: ServiceSnapshot) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): the snapshot's every field, `status` and `reasons` (why it is not "ok"; the reasons for
    "unavailable" first)."""
    breakers = {name: CircuitState(state) for name, state in sorted(s.breakers.items())}
    down = []
    if s.wal.get("usable") is not True:
        down.append(f"WAL unusable ({s.wal.get('path', 'no path')})")
    if not any(w.get("ready") is True for w in s.workers):
        down.append(f"no ready worker ({len(s.workers)} worker(s))")
    if not s.kafka_ok:
        down.append(f"Kafka: {s.kafka_error or 'not ok'}")
    down += [f"breaker {name} {state.name}" for name, state in breakers.items() if state in _DOWN]
    degraded = [f"breaker {name} HALF_OPEN" for name, state in breakers.items() if state is CircuitState.HALF_OPEN]
    if s.conservative_active:
        degraded.append(
            "conservative mode" + (f": {'; '.join(s.conservative_causes)}" if s.conservative_causes else "")
        )
    status, code = ("unavailable", 503) if down else ("degraded", 200) if degraded else ("ok", 200)
    return code, {
        "status": status,
        "reasons": down + degraded,
        "instance_id": s.instance_id,
        "breakers": {name: state.name for name, state in breakers.items()},
        "conservative_active": s.conservative_active,
        "conservative_causes": list(s.conservative_causes),
        "wal": dict(s.wal),
        "queue": dict(s.queue),
        "workers": [dict(w) for w in s.workers],
        "kafka_ok": s.kafka_ok,
        "kafka_error": s.kafka_error,
        "uptime_s": s.uptime_s,
    }


_dumps = partial(json.dumps, default=str)  # a snapshot may hold paths and the like


class HealthServer:
    """GET /metrics (the metrics' exposition) and GET /health/tezzeret (`health_report(snapshot_fn())`, called in a
    worker thread so a slow snapshot never stalls /metrics), served by aiohttp on its own thread and event loop.
    A snapshot_fn that raises answers 503 with the error; the server carries on."""

    def __init__(
        self, host: str, port: int, metrics: TezzeretMetrics, snapshot_fn: Callable[[], ServiceSnapshot]
    ) -> None:
        self.host = host
        self._requested_port = port
        self._metrics = metrics
        self._snapshot_fn = snapshot_fn
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose when constructed with 0); only after start()."""
        if self._port is None:
            raise RuntimeError("the health server is not listening")
        return self._port

    @property
    def url(self) -> str:
        """Its base address, e.g. http://127.0.0.1:8790 (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind and return once listening; the bind's error (an address in use, say) is raised here."""
        if self._thread is not None:
            raise RuntimeError("the health server was started already")
        self._thread = threading.Thread(target=self._run, name="tezzeret-health", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the health server did not listen within {timeout_s} s")
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the listener and the open connections, end the thread; a no-op when not running."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"the health server did not stop within {timeout_s} s")

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to start() when it happened before listening
            if not self._ready.is_set():
                self._error = e
                self._ready.set()
            else:
                log.exception("health server stopped on an error")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._on_metrics)
        app.router.add_get(HEALTH_PATH, self._on_health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
            self._port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    async def _on_metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _on_health(self, _: web.Request) -> web.Response:
        try:
            code, body = health_report(await asyncio.to_thread(self._snapshot_fn))
        except Exception as e:
            log.warning("health snapshot failed: %s: %s", type(e).__name__, e)
            code, body = 503, {"status": "unavailable", "reasons": [f"snapshot failed: {type(e).__name__}: {e}"]}
        return web.json_response(body, status=code, dumps=_dumps)


def fetch_health(url: str, timeout_s: float = 5.0) -> tuple[int, dict[str, Any]]:
    """(HTTP status, report) from a health endpoint, whatever the status. Raises OSError (urllib's URLError, a
    timeout) when nothing answers, ValueError for a URL that is not http(s) or an answer that is not a JSON object."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            code, raw = response.status, response.read(_MAX_BODY)
    except urllib.error.HTTPError as e:  # 503 and the like still carry the report
        with e:
            code, raw = e.code, e.read(_MAX_BODY)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"HTTP {code}, not JSON: {raw[:200]!r}") from e
    if not isinstance(body, dict):
        raise ValueError(f"HTTP {code}, a JSON {type(body).__name__}, not an object")
    return code, body


def status_command(
    url: Annotated[
        str, typer.Option("--url", envvar="ESPER_TEZZERET_HEALTH_URL", help="Tezzeret's health endpoint.")
    ] = DEFAULT_HEALTH_URL,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 5.0,
) -> None:
    """Print Tezzeret's health report as JSON: exit 0 when healthy (ok or degraded), 1 when unavailable, 2 when no
    health report can be had from the URL."""
    try:
        code, body = fetch_health(url, timeout)
    except OSError as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        sys.stderr.write(f"error: Tezzeret is unreachable at {url}: {reason}\n")
        raise typer.Exit(2) from e
    except ValueError as e:
        sys.stderr.write(f"error: {url} gave no health report: {e}\n")
        raise typer.Exit(2) from e
    sys.stdout.write(json.dumps(body, indent=2) + "\n")
    if code != 200:
        raise typer.Exit(1)
