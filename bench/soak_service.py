"""`make soak` (minutes; not part of `make test` or `make bench`): does a running Tezzeret's memory stay flat over
10,000 requests for distinct blueprints?

The service runs as deployed (`esper compiler run`, its own process, a fresh home). Before it starts, 10,000
distinct BlueprintIRs are produced to leyline.blueprints (the example MLP under its own id, its hidden width and
dropout varied within bounds: all of about one size, since a soak whose artifacts grew would measure that), and the
service's groups are set past them: its log index reads them all, its lane does not take each as a submission (which
would be 10,000 compiles at the default tier). Then 10,000 CompilationRequests name them by id, in blocks of 1,000
produced at once and read back to the last result; the service's RSS (psutil) is sampled after each block.
Most requests carry deadline_ms=1 and a requested_at a minute old, so they are answered FAILURE_TIMEOUT without a
compile, but only after everything a request goes through before the scheduler: decode, the request shape, the
blueprint index, validation, dynamic tier selection, canonical bytes and job key, the cache lookup, the scheduler's
admission, the answer transaction with its audit record and ledger. Every 200th request is a real EMERGENCY compile
(WAL, sandbox, store, cache, kernels record). Exit 0 when flat, 1 when not.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_service import Results, ServiceProcess, mlp
from kafka_env import bench_bootstrap

from esper.logs import configure as configure_logging
from esper.proto import leyline_pb2 as pb
from esper.streams.producer import LeylineProducer
from esper.streams.topics import BLUEPRINTS, COMPILATION_REQUESTS

REQUESTS = 10_000
BLOCK = 1_000  # requests between RSS samples
COMPILE_EVERY = 200
REFERENCE_AT = 2_000  # flat: the last sample within FLAT of the sample after this many requests
FLAT = 0.15
BLOCK_TIMEOUT_S = 900.0

EXERCISES = (
    "exercises: decode, request shape, blueprint index lookup, validation, tier selection, canonical bytes, job"
    " key, cache lookup (misses), scheduler admission (expired), answer transactions, audit, ledgers; and every"
    f" {COMPILE_EVERY}th request a real EMERGENCY compile (WAL, sandbox, store, L1 insert, kernels record)"
)
DOES_NOT = (
    "does not exercise: the index growing while it runs (it reads the 10,000 blueprints before the first sample),"
    " blueprint submissions on leyline.blueprints, queued or coalesced tickets, compiles at other tiers, cache hits"
    " at scale, the emergency lane beyond its start, rebalances, conservative mode"
)


def blueprint(blueprint_id: str, i: int) -> pb.BlueprintIR:
    """The i-th distinct blueprint, all of about one size (a soak whose artifacts grew would measure that)."""
    return mlp(blueprint_id, hidden=128 + i % 100, dropout=(1 + i // 100) / 1000)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main() -> int:
    configure_logging()
    servers = bench_bootstrap()
    root = Path(tempfile.mkdtemp(prefix="esper-soak-"))
    tag = uuid.uuid4().hex[:8]
    ids = [f"soak-{tag}-{i}" for i in range(REQUESTS)]
    producer = LeylineProducer(servers, producer_id="esper-soak")
    print(f"producing {REQUESTS} distinct blueprints to {BLUEPRINTS.name} ...", flush=True)
    for i, blueprint_id in enumerate(ids):
        producer.send(BLUEPRINTS.name, blueprint(blueprint_id, i), key=blueprint_id)
    if producer.flush(120):
        raise RuntimeError("the blueprints were not all delivered")
    service = ServiceProcess(servers, root)
    results = Results(servers)
    pid = service.start()
    samples: list[tuple[int, int, int, float, dict[str, int]]] = []
    try:
        service.wait_ready()
        proc = psutil.Process(pid)

        def sample(done: int, outcomes: dict[str, int]) -> None:
            workers = sum(c.memory_info().rss for c in proc.children(recursive=True))
            samples.append((done, proc.memory_info().rss, workers, time.perf_counter() - start, outcomes))
            row = samples[-1]
            said = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            print(f"{row[0]:>8}  {_mib(row[1]):>11}  {_mib(row[2]):>11}  {row[3]:>7.1f}  {said}", flush=True)

        print(EXERCISES)
        print(DOES_NOT)
        print(f"\n{'requests':>8}  {'service MiB':>11}  {'workers MiB':>11}  {'seconds':>7}  answers of the block")
        start = time.perf_counter()
        sample(0, {})
        for first in range(0, REQUESTS, BLOCK):
            rids = []
            for i in range(first, first + BLOCK):
                msg = pb.CompilationRequest(
                    request_id=uuid.uuid4().hex, blueprint_id=ids[i], requestor="soak", device="cpu"
                )
                if i % COMPILE_EVERY == COMPILE_EVERY - 1:
                    msg.strategy = pb.STRATEGY_EMERGENCY
                    msg.requested_at.GetCurrentTime()
                else:
                    msg.deadline_ms = 1
                    msg.requested_at.FromMilliseconds(time.time_ns() // 1_000_000 - 60_000)
                producer.send(COMPILATION_REQUESTS.name, msg, key=msg.blueprint_id)
                rids.append(msg.request_id)
            producer.poll(0)
            results.wait(rids, timeout_s=BLOCK_TIMEOUT_S, service=service)
            outcomes: dict[str, int] = {}
            for rid in rids:
                result = results.seen.pop(rid)[1]
                said = "SUCCESS" if result.success else pb.FailureReason.Name(result.failure_reason)
                outcomes[said] = outcomes.get(said, 0) + 1
            sample(first + BLOCK, outcomes)
    finally:
        producer.close()
        results.close()
        service.stop()
    reference = next(s for s in samples if s[0] == REFERENCE_AT)
    last = samples[-1]
    drift = (last[1] - reference[1]) / reference[1]
    flat = abs(drift) <= FLAT
    print(
        f"\nverdict: {'flat' if flat else 'NOT flat'}: service RSS {_mib(last[1])} MiB after {last[0]} requests,"
        f" {drift:+.1%} from {_mib(reference[1])} MiB at {REFERENCE_AT} (flat: within {FLAT:.0%});"
        f" sandbox workers {(last[2] - reference[2]) / reference[2]:+.1%} (not judged)"
    )
    if flat:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept for a look: {root} (the service's log: {service.log_path.name})")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
