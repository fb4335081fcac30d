"""Size and speed of a typical circuit-breaker transition telemetry packet, bare protobuf vs our envelope codec.

Spec budget (Leyline Option B): at most 280 bytes and 80 µs per packet.
"""

from __future__ import annotations

import uuid

from common import Row, per_call_ns, print_table, ratio_row

from esper.proto import leyline_pb2 as pb
from esper.streams import envelope as env
from esper.streams.topics import TELEMETRY


def breaker_transition_packet() -> pb.TelemetryPacket:
    """Built as the Kasmina breaker reports a transition: one event, four map attributes."""
    packet = pb.TelemetryPacket(
        packet_id=uuid.uuid4().hex, source_subsystem="kasmina", source_id="kasmina-0", level=pb.TELEMETRY_WARN
    )
    packet.timestamp.GetCurrentTime()
    event = packet.events.add(
        event_name="circuit_breaker_state_transition",
        severity=pb.TELEMETRY_WARN,
        message="kernel_loading: closed -> open",
    )
    event.timestamp.GetCurrentTime()
    event.attributes.update(
        {"circuit_breaker_name": "kernel_loading", "old_state": "closed", "new_state": "open", "failure_count": "10"}
    )
    return packet


def run() -> list[Row]:
    packet = breaker_transition_packet()
    bare = packet.SerializeToString()
    envelope = env.new_envelope(packet, producer="kasmina-0", correlation_id="bp-1")
    value, headers = env.encode(packet, envelope)
    header_bytes = sum(len(k) + len(v or b"") for k, v in headers)

    calls = 20_000
    t_ser = per_call_ns(packet.SerializeToString, calls)
    t_enc = per_call_ns(lambda: env.encode(packet, envelope), calls)
    t_parse = per_call_ns(lambda: pb.TelemetryPacket().ParseFromString(bare), calls)
    t_dec = per_call_ns(lambda: env.decode(value, headers, TELEMETRY.name), calls)
    t_build = per_call_ns(breaker_transition_packet, calls // 4)
    return [
        Row("telemetry packet size (protobuf)", len(bare), "bytes", "spec max 280", len(bare) / 280),
        Row("envelope headers size", header_bytes, "bytes"),
        ratio_row("packet serialize, bare protobuf", t_ser / 1000, "µs", "spec 80 µs", 80.0),
        ratio_row("packet encode, envelope codec", t_enc / 1000, "µs", "bare serialize", t_ser / 1000),
        ratio_row("packet parse, bare protobuf", t_parse / 1000, "µs", "spec 80 µs", 80.0),
        ratio_row("packet decode, envelope codec", t_dec / 1000, "µs", "bare parse", t_parse / 1000),
        ratio_row("packet build in Python (event + 4 attrs)", t_build / 1000, "µs", "spec 80 µs", 80.0),
    ]


if __name__ == "__main__":
    print_table(run(), "codec")
