"""The live dashboard in a real headless browser (Debian's chromium, driven by its chromedriver through selenium):
`esper projections run` on a broker of its own serves GET /dashboard; events produced while the page is open show
up in its DOM without a reload (a breaker opening, a pause, a seed moving, a compile result, a dead letter), and a
breaker closing rewrites its row in place. Prints the produce -> DOM latency of that update and keeps a screenshot."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.message import Message as ProtoMessage
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from esper.proto import leyline_pb2 as pb
from esper.safety.events import safety_event
from esper.streams.local.broker import LocalBroker
from esper.streams.producer import LeylineProducer
from esper.streams.topics import COMPILATION_REQUESTS, COMPILATION_RESULTS, DEADLETTER, SAFETY
from tests.conftest import own_broker
from tests.integration.test_projections_app import Worker, _breaker
from tests.polling import wait_for

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
ARTIFACT = REPO / ".esper" / "test-artifacts" / "dashboard.png"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's (`make browser`)


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with own_broker("dashboard-broker", 170) as b:
        yield b


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make browser`", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(arg)
    # The driver's path is given, so Selenium Manager never runs (it would try to download one).
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _cell(driver: WebDriver, board: str, key: str, field: str) -> str | None:
    """The text of a row's cell as rendered, None while the row is not there."""
    try:
        row = driver.find_element("id", f"{board}:{key}")
        return row.find_element("css selector", f'td[data-field="{field}"]').text
    except NoSuchElementException:
        return None


def _shows(
    driver: WebDriver, worker: Worker, board: str, key: str, field: str, text: str, timeout_s: float = 30.0
) -> None:
    seen: list[str | None] = []

    def shown() -> bool:
        seen.append(_cell(driver, board, key, field))
        return seen[-1] == text

    assert wait_for(shown, timeout_s, 0.02), f"{board}:{key} {field} is {seen[-1]!r}, not {text!r}\n{worker.tail()}"


def test_the_dashboard_shows_events_as_they_happen_without_a_reload(
    broker: LocalBroker, browser: WebDriver, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    source, request = f"k-{run}", f"r-{run}"
    worker = Worker(bootstrap, tmp_path / "data", tmp_path / "app.log")
    producer = LeylineProducer(bootstrap, producer_id=f"test-dashboard-{run}")

    def send(topic: str, message: ProtoMessage, key: str) -> None:
        producer.send_sync(topic, message, key, envelope=producer.envelope_for(message))

    try:
        assert wait_for(lambda: worker.digests() is not None, 60, 0.2), f"the app never answered\n{worker.tail()}"
        try:
            served = worker.get("/dashboard/state")[0]
        except ValueError:  # aiohttp's own 404 is not JSON
            served = 404
        assert served == 200, f"GET /dashboard/state: {served} (does build_app call dashboard.register(app)?)"
        browser.get(f"http://127.0.0.1:{worker.port}/dashboard")
        polls = browser.find_element("tag name", "body")
        assert wait_for(lambda: int(polls.get_attribute("data-polls") or 0) > 0, 20), f"no poll\n{worker.tail()}"
        browser.execute_script("window.esperLoaded = true")  # a reload would forget it
        # Send the breaker first, so that the app's routing is warm for the timed update below.
        send(SAFETY.name, _breaker(pb.CIRCUIT_OPEN, source), f"kasmina/{source}")
        pause = pb.PauseEntered(instance_id=source, slot_id="s0", reason="test pause", quota_ms=500)
        send(SAFETY.name, safety_event(pb.TELEMETRY_INFO, "paused", pause, source_id=source), f"kasmina/{source}")
        seed = pb.SeedTransition(
            instance_id=source, slot_id="s0", from_stage=pb.SEED_DORMANT, to_stage=pb.SEED_GERMINATED, gate="G1"
        )
        send(SAFETY.name, safety_event(pb.TELEMETRY_INFO, "seed", seed, source_id=source), f"kasmina/{source}")
        send(COMPILATION_REQUESTS.name, pb.CompilationRequest(request_id=request, blueprint_id=f"bp-{run}"), run)
        result = pb.CompilationResult(
            request_id=request,
            blueprint_id=f"bp-{run}",
            success=True,
            strategy=pb.STRATEGY_FAST,
            cache_level=pb.CACHE_L2,
            artifact_id="a1",
            total_ms=42,
        )
        send(COMPILATION_RESULTS.name, result, run)
        letter = pb.DeadLetter(origin_topic=f"t-{run}", origin_partition=0, origin_offset=7, error_type="X")
        send(DEADLETTER.name, letter, run)

        breaker = f"kasmina/{source}/graft"
        _shows(browser, worker, "breakers", breaker, "state", "OPEN", 90)  # the app's first rebalance included
        _shows(browser, worker, "pauses", f"{source}/s0", "state", "PAUSED")
        _shows(browser, worker, "seeds", f"{source}/s0", "stage", "GERMINATED")
        _shows(browser, worker, "compilations", request, "status", "done")
        assert _cell(browser, "compilations", request, "tier") == "FAST"
        assert _cell(browser, "compilations", request, "cache") == "L2"
        _shows(browser, worker, "deadletters", f"t-{run}", "count", "1")
        row = browser.find_element("id", f"breakers:{breaker}")
        opened_colour = row.find_element("css selector", 'td[data-field="state"]').value_of_css_property(
            "background-color"
        )

        closing = _breaker(pb.CIRCUIT_CLOSED, source)
        closing.breaker_transition.from_state = pb.CIRCUIT_OPEN
        sent_ms = time.time() * 1000
        send(SAFETY.name, closing, f"kasmina/{source}")
        _shows(browser, worker, "breakers", breaker, "state", "CLOSED")
        seen_ms = time.time() * 1000
        changed_ms = float(row.get_attribute("data-changed-ms") or "nan")  # the same element: updated in place
        assert row.get_attribute("data-tone") == "CLOSED"
        closed_colour = row.find_element("css selector", 'td[data-field="state"]').value_of_css_property(
            "background-color"
        )
        assert closed_colour != opened_colour, closed_colour  # coloured by state
        assert browser.execute_script("return window.esperLoaded") is True, "the page reloaded"
        assert browser.find_element("id", f"events:breaker:{breaker}").text.count("OPEN → CLOSED") == 1

        screenshot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, ARTIFACT)
        print(f"\ndashboard screenshot: {screenshot} and {ARTIFACT}")
        print(
            f"produce -> DOM latency (breaker CLOSED): {changed_ms - sent_ms:.0f} ms by the page's clock, "
            f"{seen_ms - sent_ms:.0f} ms as the test saw it (the page polls every 1,000 ms)"
        )
    finally:
        producer.close()
        worker.kill()
