"""`foreshard-broker`: one shard's broker process.

Every flag also reads `FORESHARD_BROKER_<FLAG>` from the environment (the StatefulSet sets those).
On start it prints one JSON line to stdout, {"event": "listening", "grpc_port": N, "http_port": M},
so a supervisor can use port 0; logs are JSON lines on stderr. SIGTERM (or SIGINT) drains: readiness
turns false, new calls are refused, in-flight calls finish within the grace period, the log is
synced and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import grpc

from foreshard_broker.server.admin import Admin
from foreshard_broker.server.admin_service import AdminService
from foreshard_broker.server.auth import AdminAuth, TokenError, read_token
from foreshard_broker.server.broker import Broker
from foreshard_broker.server.config import BrokerConfig, Limits
from foreshard_broker.server.metrics import BrokerMetrics
from foreshard_broker.server.probes import HttpEndpoint
from foreshard_broker.server.registration import add_service
from foreshard_broker.server.service import BrokerService
from foreshard_broker.storage import SegmentLogStorage, faults

log = logging.getLogger("foreshard_broker")
DRAIN_QUIET_S = 0.5  # no publish for this long: the producers have followed their moves


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="foreshard-broker", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--data-dir", default=env("FORESHARD_BROKER_DATA_DIR", "/var/lib/foreshard"))
    add("--grpc-listen", default=env("FORESHARD_BROKER_GRPC_LISTEN", "0.0.0.0:7070"))
    add("--http-listen", default=env("FORESHARD_BROKER_HTTP_LISTEN", "0.0.0.0:8080"))
    add(
        "--queue",
        default=env("FORESHARD_BROKER_QUEUE", "default"),
        help="queue name, the metrics' queue label",
    )
    add("--shard", default=env("FORESHARD_BROKER_SHARD", "auto"), help="ordinal, or auto (HOSTNAME suffix)")
    add("--slots", type=int, default=int(env("FORESHARD_BROKER_SLOTS", "1024")))
    add("--sync", choices=["group", "always", "none"], default=env("FORESHARD_BROKER_SYNC", "group"))
    add("--segment-bytes", type=int, default=int(env("FORESHARD_BROKER_SEGMENT_BYTES", str(64 << 20))))
    add("--linger-ms", type=float, default=float(env("FORESHARD_BROKER_LINGER_MS", "0")))
    add("--ack-deadline", type=float, default=float(env("FORESHARD_BROKER_ACK_DEADLINE", "30")))
    add(
        "--rate-window",
        type=float,
        default=float(env("FORESHARD_BROKER_RATE_WINDOW", "60")),
        help="seconds per-key and per-slot rates average over; keys idle that long fold into their slot",
    )
    add(
        "--max-tracked-keys",
        type=int,
        default=int(env("FORESHARD_BROKER_MAX_TRACKED_KEYS", "10000")),
        help="keys with per-key load accounting; past it keys without backlog fold into their slot",
    )
    add(
        "--retention-age",
        type=float,
        default=float(env("FORESHARD_BROKER_RETENTION_AGE", str(7 * 86400))),
        help="seconds a message is kept for a group that has not consumed it (0: no limit)",
    )
    add(
        "--retention-bytes",
        type=int,
        default=int(env("FORESHARD_BROKER_RETENTION_BYTES", str(768 << 20))),
        help="unacknowledged bytes kept; past it the oldest are dropped for lagging groups (0: no limit)",
    )
    add(
        "--compact-every",
        type=float,
        default=float(env("FORESHARD_BROKER_COMPACT_EVERY", "10")),
        help="seconds between compactions of the acknowledged log prefix",
    )
    add(
        "--await-routing",
        action="store_true",
        default=env("FORESHARD_BROKER_AWAIT_ROUTING", "") not in ("", "0", "false"),
        help="own nothing (refuse publishes, not ready) until a routing table is pushed; for shard pods",
    )
    add("--grace", type=float, default=float(env("FORESHARD_BROKER_GRACE", "10")))
    add(
        "--drain-seconds",
        type=float,
        default=float(env("FORESHARD_BROKER_DRAIN_SECONDS", "5")),
        dest="drain_s",
        help="after SIGTERM, keep answering (MOVED, or SHARD_DRAINING: nothing stored) until no "
        f"publish has come for {DRAIN_QUIET_S:g} s, at most this long, before the server stops",
    )
    add("--log-level", default=env("FORESHARD_BROKER_LOG_LEVEL", "INFO"))
    add(
        "--admin-token-file",
        default=env("FORESHARD_BROKER_ADMIN_TOKEN_FILE"),
        help="file holding the bearer token every Admin call must carry; without it the Admin API is off",
    )
    for limit in fields(Limits):
        flag = limit.name.replace("_", "-")
        default = int(env("FORESHARD_BROKER_" + limit.name.upper(), str(limit.default)))
        add(f"--{flag}", type=int, default=default, dest=limit.name)
    return parser.parse_args(argv)


def shard_ordinal(value: str) -> int:
    if value != "auto":
        return int(value)
    match = re.search(r"-(\d+)$", os.environ.get("HOSTNAME", ""))
    return int(match.group(1)) if match else 0


class JsonFormatter(logging.Formatter):
    BASE: ClassVar[set[str]] = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self.BASE})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(args: argparse.Namespace) -> int:
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    auth = AdminAuth(read_token(Path(args.admin_token_file)) if args.admin_token_file else None)
    config = BrokerConfig(
        shard_ordinal(args.shard),
        args.slots,
        args.ack_deadline,
        limits=limits,
        rate_window_s=args.rate_window,
        max_tracked_keys=args.max_tracked_keys,
        retention_max_age_s=args.retention_age,
        retention_max_bytes=args.retention_bytes,
        await_routing=args.await_routing,
    )
    data_dir = Path(args.data_dir)
    storage = SegmentLogStorage(
        data_dir / "log",
        sync=args.sync,
        segment_bytes=args.segment_bytes,
        linger=args.linger_ms / 1000,
        ops=faults.from_environment(),  # None (the real OS calls) unless a fault test asks
    )
    broker = Broker(config, storage)
    # Fence leases and import marks follow the log's durability (sync none: page cache only).
    admin = Admin(broker, data_dir / "routing.json", durable=args.sync != "none")
    broker.open()
    admin.load_routing()
    tune_gc()
    metrics = BrokerMetrics(admin, args.queue)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 2 * limits.max_batch_bytes + (1 << 20)),
            ("grpc.max_send_message_length", 2 * limits.max_fetch_bytes + (1 << 20)),
            ("grpc.http2.lookahead_bytes", 8 << 20),
        ]
    )
    add_service(server, "Broker", BrokerService(broker, limits.max_inflight_bytes_per_connection))
    add_service(server, "Admin", AdminService(admin), guard=auth.check)
    grpc_port = server.add_insecure_port(args.grpc_listen)
    await server.start()
    probes = HttpEndpoint(metrics.render, lambda: _live(broker), lambda: _ready(broker))
    http_server = await probes.start(*split_hostport(args.http_listen))
    http_port = http_server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "listening", "grpc_port": grpc_port, "http_port": http_port}), flush=True)
    log.info(
        "serving",
        extra={"shard": config.shard, "grpc_port": grpc_port, "http_port": http_port, "admin": auth.enabled},
    )
    await _run_until_signal(broker, args.compact_every)
    log.info("draining")
    broker.draining = True
    await drain_window(broker, args.drain_s)
    await server.stop(grace=args.grace)
    http_server.close()
    await storage.close()
    log.info("stopped", extra={"next_offset": broker.state.next_offset})
    return 0


def tune_gc() -> None:
    """Turn the automatic cyclic GC off; `GcPolicy` collects on a schedule instead.

    A collection walks every container it tracks, and the retained chunks' key and payload
    columns are containers: at 200k messages/s the automatic collector paused the loop for 10-15 ms
    every few seconds (seen as the publish p99), and cost ~20% of throughput. Keeping it on only for
    young objects does not help, since every young collection walks the batches in flight.
    """
    gc.collect()
    gc.freeze()  # start-up objects live for the whole process: keep them out of every collection
    gc.disable()


class GcPolicy:
    """A full collection every `every` seconds (the automatic collector is off, see tune_gc).

    Cyclic garbage does accumulate in between: grpc's server makes 5 cyclic objects per unary call
    (its method-handler lookup; streaming Publish makes them once per stream), about 0.7 MB/s at
    1000 fetch/ack calls per second. A minute bounds that to tens of MB. The price is one pause per
    minute that grows with the backlog: measured 61-66 ms with a million retained messages (and a
    few ms with a small backlog). Packing chunk columns into untracked str/bytes/arrays would
    remove both; see docs/broker.md.
    """

    def __init__(self, now: float, every: float = 60.0) -> None:
        self.every = every
        self.last = now

    def tick(self, now: float) -> None:
        if now - self.last >= self.every:
            self.last = now
            gc.collect()


def _live(broker: Broker) -> str | None:
    return f"storage failed: {broker.failed}" if broker.failed else None


def _ready(broker: Broker) -> str | None:
    if broker.awaiting_routing:
        return "waiting for a routing table from the operator"
    return _live(broker) or ("draining" if broker.draining else None)


async def drain_window(broker: Broker, longest_s: float, quiet_s: float = DRAIN_QUIET_S) -> None:
    """Answer while draining until producers go quiet (at most `longest_s`). A call the server
    stops under is cancelled, an outcome its client cannot know, so it must wait and resend to
    the same broker; a call answered while draining gets MOVED or SHARD_DRAINING, which say that
    nothing was stored and where to go."""
    deadline = time.monotonic() + longest_s
    while (now := time.monotonic()) < deadline and now - broker.last_publish_at < quiet_s:
        await asyncio.sleep(min(quiet_s / 5, deadline - now))


async def _run_until_signal(broker: Broker, compact_every: float = 10.0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    last_compaction = time.monotonic()
    collector = GcPolicy(last_compaction)
    while not stop.is_set():
        now = time.monotonic()
        broker.load.tick(now)
        broker.expire_by_age(int(time.time() * 1000))
        collector.tick(now)
        if now - last_compaction >= compact_every:
            last_compaction = now
            freed = broker.compact()
            if freed:
                log.info("compacted", extra={"freed_bytes": freed})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(1.0, compact_every))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        return run_loop(serve(args))
    except TokenError as error:
        log.error(str(error))
        return 2


def run_loop(main: Coroutine[None, None, int]) -> int:
    """uvloop (libuv) runs grpc.aio's callbacks with less overhead per loop turn: measured ~30%
    more batched publishes and ping-pong round trips than asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # a platform without uvloop (a dependency everywhere else): still works
        return asyncio.run(main)
    return uvloop.run(main)


if __name__ == "__main__":
    sys.exit(main())
