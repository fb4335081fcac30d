"""A small Faust app for the stack proof: counts records per key in a RocksDB (rocksdict) table.

Run by the test as `faust -A tests.integration.faust_probe_app worker`, configured through the environment.
"""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["PROBE_APP_ID"],
    broker=f"kafka://{os.environ['PROBE_BOOTSTRAP']}",
    store="rocksdb://",
    topic_partitions=1,
    topic_replication_factor=1,
    web_port=int(os.environ["PROBE_WEB_PORT"]),
    web_host="127.0.0.1",
)
source = app.topic(os.environ["PROBE_TOPIC"], key_serializer="raw", value_serializer="raw")
# RocksDB defaults (2 GiB block cache, 3 x 64 MiB write buffers per partition) do not fit a small machine.
counts = app.Table(
    "counts",
    default=int,
    partitions=1,
    options={"block_cache_size": 8 * 1024 * 1024, "write_buffer_size": 4 * 1024 * 1024, "max_write_buffer_number": 2},
)


@app.agent(source)
async def count(stream: faust.Stream) -> None:
    async for key, _value in stream.items():
        counts[key.decode()] += 1


@app.page("/counts/")
async def show_counts(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
    store = counts.data
    return web.json(
        {
            "counts": dict(counts.items()),
            "store": f"{type(store).__module__}.{type(store).__name__}",
            "rocksdict": getattr(store, "use_rocksdict", False),
        }
    )
