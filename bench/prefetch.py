"""Prefetch benchmark: the adaptive Prefetch Agent against fixed prefetch counts, on the twin and on
real brokers, in one run.

1. **Twin grid.** The in-memory twin brokers (``foreshard_broker.client.twin``) with an injected
   round trip, on an event loop with a *virtual clock*: time jumps to the next timer when every task
   waits, so processing times and round trips are exact and the grid takes seconds of CPU.  What is
   measured there is the prefetch policy alone (how much to fetch, when), not Python's speed.
2. **Twin vs real brokers.** The same workload, the agent against fixed prefetch 1000, over the twin
   (1 ms round trip, virtual clock) and over two real broker processes on loopback (gRPC, wall
   clock, the bench's own CPU and the brokers' on the same shared cores), ``BENCH_ROUNDS`` seeds
   each (6), a fresh pair of brokers for every real run, the policies alternating first.  Then
   ``twin-cal``: the twin again, given the real runs' median fetch round trip and handler time, to
   see how much of any difference the machine explains.  Figures are medians over the rounds;
   ratios are ratios of those medians, and for real adaptive/fixed also the median of each round's
   own ratio.

Workload per run: 2 consumers of one group, 4 workers each, mean processing time 2 ms (capacity
4000 msg/s); 20000 keys over 2 shards (the broker holds a key's next message until the current one
is acked, so with few keys per-key chains, not prefetch, set the tail latency); Poisson arrivals at
600 msg/s for 3 s with a producer burst of 5000 messages of 256 bytes (1.25 s of capacity) at 0.5 s,
once the consumers are running, then drained.  The arrivals are drawn in advance from the seed, so
every policy and both transports see the same ones; they are published straight to the owning
shard (the twin's broker object; on real brokers one batch per shard per 5 ms tick), and each
payload carries its index, so delivery latency is measured from the scheduled arrival on one clock.

* throughput: messages processed / time until the last one was processed
* buffer: messages (and payload bytes) a consumer holds, buffered plus being processed, sampled
  every 10 ms; the grid sums both consumers (peak and time average, as before), the comparison
  reports one consumer's exact peak and its median while it held anything
* budget: every consumer's exact peak within ``max_messages`` (1000) and ``max_bytes`` (1 MiB)
* stall: worker-seconds idle that messages still at the brokers could have filled
  (``min(idle workers, messages at the brokers)``, sampled every 10 ms): waiting for a fetch
* rtt est: the agents' round-trip estimate at the end; fetch p50/p90: round trips of the real
  consumers' answered fetches (the samples the estimate is the minimum of); handler ms: the mean
  wall time of a handler's ``sleep`` (2 ms asked; on a busy machine the event loop wakes it late);
  msg/fetch: messages delivered per fetch call, empty long-polls included
* p99 delivery: 99th percentile of scheduled arrival -> hand-over to the application, in ms
* best fixed (grid): the fixed count with the highest throughput (ties within 1 % go to the lower
  p99)

Prints both tables, then one JSON line of figures and ratios.  Writes ``bench/results/prefetch.json``
(every run); redirect stdout to ``prefetch.txt``.  ``--compare-only`` skips the grid.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.prefetch import PrefetchPolicy
from foreshard_broker.client.transport import (
    Delivery,
    FetchRequest,
    OutboundMessage,
    PublishStatus,
    RoutingTable,
    Transport,
    slot_of,
)
from foreshard_broker.client.twin import TwinNetwork, TwinTransport
from foreshard_broker.client.virtual_clock import run_virtual
from foreshard_broker.testing import BrokerProcess

FIXED = (1, 10, 100, 300, 1000)
ROUND_TRIPS_MS = (1, 10, 50)
SHAPES = ("constant", "exponential", "bursty")
CONSUMERS, WORKERS, MEAN_PROCESSING_S = 2, 4, 0.002
KEYS, SHARDS, SLOTS, PAYLOAD = 20000, 2, 256, 256
ARRIVAL_RATE, BURST, BURST_EVERY_S, DURATION_S, WARM_UP_S = 600.0, 5000, 2.5, 3.0, 0.5
POLICY = PrefetchPolicy(max_messages=1000, max_bytes=1 << 20)
SAMPLE_S, REAL_TICK_S = 0.01, 0.005
COMPARE_SHAPE, COMPARE_RTT_MS = "exponential", 1
TRANSPORTS = ("twin", "real", "twin-cal")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
RESULTS = Path(__file__).resolve().parent / "results"


def processing_times(shape: str, rng: random.Random, mean_s: float) -> Callable[[], float]:
    if shape == "constant":
        return lambda: mean_s
    if shape == "exponential":
        return lambda: rng.expovariate(1 / mean_s)
    # bursty: mostly quick, one in ten stalls for 7.75 means (15.5 ms of a 2 ms mean)
    return lambda: mean_s * (7.75 if rng.random() < 0.1 else 0.25)


def arrivals(seed: int) -> list[tuple[float, str]]:
    """(seconds from start, key) of every message: open-loop Poisson arrivals plus the burst."""
    rng = random.Random(seed)
    out: list[tuple[float, str]] = []
    at, next_burst = 0.0, WARM_UP_S
    while at < DURATION_S:
        count = 1
        if at >= next_burst:
            count, next_burst = BURST, next_burst + BURST_EVERY_S
        out += [(at, f"key-{rng.randrange(KEYS)}") for _ in range(count)]
        at += rng.expovariate(ARRIVAL_RATE)
    return out


def payload(index: int) -> bytes:
    return index.to_bytes(4, "big") + b"x" * (PAYLOAD - 4)


# Publishes a batch of messages to the shard at an endpoint.
Send = Callable[[str, list[OutboundMessage]], Awaitable[None]]


@dataclass
class Setup:
    """Where one run's consumers fetch and how its arrivals reach the brokers."""

    transport: str
    transports: list[Transport]  # one per consumer
    endpoints: list[str]
    table: RoutingTable
    send: Send
    tick_s: float
    processing_s: float = MEAN_PROCESSING_S  # the handlers' mean


@dataclass
class Progress:
    published: int = 0
    active: int = 0
    done: int = 0
    last_done: float = 0.0
    latencies: list[float] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)  # both consumers, every sample
    messages: list[int] = field(default_factory=list)  # each consumer, every sample
    bytes: list[int] = field(default_factory=list)
    stall_s: float = 0.0
    processing_s: float = 0.0  # handlers' wall time, summed
    fetch_calls: int = 0


class TimedGrpcTransport(GrpcTransport):
    """Records the round trip of every answered fetch: the samples of the agent's estimate."""

    def __init__(self) -> None:
        super().__init__()
        self.round_trips: list[float] = []
        self.calls = {"fetch": 0}

    async def fetch(self, endpoint: str, request: FetchRequest) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.calls["fetch"] += 1
        deliveries = await super().fetch(endpoint, request)
        if deliveries:
            self.round_trips.append(loop.time() - started)
        return deliveries


@dataclass
class Run:
    transport: str
    round_trip_ms: float  # the agents' estimate (median of consumers): the twin's is the injected one
    fetch_p50_ms: float  # answered fetches' round trips (twin: injected)
    fetch_p90_ms: float
    processing_ms: float  # mean wall time of a handler (2 ms asked)
    per_fetch: float  # messages delivered per fetch call (empty long-polls included)
    shape: str
    prefetch: str
    seed: int
    throughput: float
    delivered: int
    buffered_mean: float  # both consumers
    buffered_peak: int  # both consumers, sampled
    peak_messages: int  # one consumer, exact
    median_messages: float
    peak_bytes: int
    median_bytes: float
    budget_ok: bool
    stall_s: float
    p50_delivery_ms: float
    p99_delivery_ms: float


async def publish_arrivals(
    setup: Setup, schedule: list[tuple[float, str]], start: float, progress: Progress
) -> None:
    loop, table, i = asyncio.get_running_loop(), setup.table, 0
    while i < len(schedule):
        now, by_shard = loop.time() - start, {}
        # (a microsecond of slack: a clock that lands a rounding error early must not spin)
        while i < len(schedule) and schedule[i][0] <= now + 1e-6:
            key = schedule[i][1]
            endpoint = table.endpoint(table.owner(key, slot_of(key, SLOTS)))
            by_shard.setdefault(endpoint, []).append(OutboundMessage(key, payload(i)))
            i += 1
        for endpoint, batch in by_shard.items():  # one after the other: the twin's publish never
            await setup.send(endpoint, batch)  # yields, so its arrivals land exactly on time
        progress.published = i
        if i < len(schedule):
            await asyncio.sleep(max(schedule[i][0] - (loop.time() - start), setup.tick_s))


async def sample_buffers(consumers: list[Consumer], progress: Progress) -> None:
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(SAMPLE_S)
        now = loop.time()
        held = [c.buffer.held_messages for c in consumers]
        progress.totals.append(sum(held))
        progress.messages += held
        progress.bytes += [c.buffer.held_bytes for c in consumers]
        # Idle workers the messages still at the brokers could have kept busy.
        at_brokers = progress.published - progress.done - sum(held)
        idle = CONSUMERS * WORKERS - progress.active
        progress.stall_s += max(min(idle, at_brokers), 0) * (now - last)
        last = now


async def measure(setup: Setup, shape: str, fixed: int | None, seed: int, rtt_ms: float | None) -> Run:
    loop = asyncio.get_running_loop()
    schedule = arrivals(seed)
    work = processing_times(shape, random.Random(seed + 1), setup.processing_s)
    options = ConsumerOptions(concurrency=WORKERS, fixed_prefetch=fixed, prefetch=POLICY)
    consumers = [
        Consumer(t, setup.endpoints, "bench", f"c{i}", options, registry=CollectorRegistry())
        for i, t in enumerate(setup.transports)
    ]
    progress = Progress()
    for consumer in consumers:
        await consumer.start()
    start = loop.time()

    async def handle(message: Message) -> None:
        arrival = schedule[int.from_bytes(message.payload[:4], "big")][0]
        progress.latencies.append(message.handed_at - start - arrival)
        progress.active += 1
        began = loop.time()
        await asyncio.sleep(work())
        progress.processing_s += loop.time() - began
        progress.active -= 1
        progress.done += 1
        progress.last_done = loop.time()

    runners = [asyncio.create_task(c.run(handle)) for c in consumers]
    sampler = asyncio.create_task(sample_buffers(consumers, progress))
    await publish_arrivals(setup, schedule, start, progress)
    while progress.done < len(schedule) and loop.time() - start < DURATION_S * 20:
        await asyncio.sleep(0.05)
    sampler.cancel()
    for consumer in consumers:
        await consumer.close()
    await asyncio.gather(*runners)
    estimate = statistics.median(1000 * c.agent.round_trip_s() for c in consumers)
    timed = sorted(s for t in setup.transports if isinstance(t, TimedGrpcTransport) for s in t.round_trips)
    fetches = (rtt_ms, rtt_ms) if rtt_ms else (1000 * percentile(timed, 0.5), 1000 * percentile(timed, 0.9))
    distinct = {id(t): t for t in setup.transports}.values()
    progress.fetch_calls = sum(getattr(t, "calls", {}).get("fetch", 0) for t in distinct)
    return make_run(setup.transport, shape, fixed, seed, (estimate, *fetches), consumers, progress, start)


def make_run(
    transport: str,
    shape: str,
    fixed: int | None,
    seed: int,
    round_trips: tuple[float, float, float],
    consumers: list[Consumer],
    progress: Progress,
    start: float,
) -> Run:
    latencies = sorted(progress.latencies)
    busy = [(m, b) for m, b in zip(progress.messages, progress.bytes, strict=True) if m] or [(0, 0)]
    peak_messages = max(c.buffer.peak_messages for c in consumers)
    peak_bytes = max(c.buffer.peak_bytes for c in consumers)
    return Run(
        transport,
        *(round(ms, 2) for ms in round_trips),
        round(1000 * progress.processing_s / max(len(latencies), 1), 2),
        round(len(latencies) / max(progress.fetch_calls, 1), 2),
        shape,
        "adaptive" if fixed is None else str(fixed),
        seed,
        round(len(latencies) / max(progress.last_done - start, 1e-9), 1),
        len(latencies),
        round(sum(progress.totals) / max(len(progress.totals), 1), 1),
        max(progress.totals, default=0),
        peak_messages,
        statistics.median(m for m, _ in busy),
        peak_bytes,
        statistics.median(b for _, b in busy),
        peak_messages <= POLICY.max_messages and peak_bytes <= POLICY.max_bytes,
        round(progress.stall_s, 3),
        round(1000 * percentile(latencies, 0.50), 2),
        round(1000 * percentile(latencies, 0.99), 2),
    )


def percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(math.ceil(q * len(ordered)) - 1, 0))] if ordered else 0.0


# --- transports --------------------------------------------------------------------------------
async def twin_run(
    round_trip_ms: float,
    shape: str,
    fixed: int | None,
    seed: int = 1,
    processing_s: float = MEAN_PROCESSING_S,
    name: str = "twin",
) -> Run:
    network = TwinNetwork(SHARDS, SLOTS)
    transport = TwinTransport(network, round_trip_s=round_trip_ms / 1000)

    async def send(endpoint: str, batch: list[OutboundMessage]) -> None:
        network.brokers[endpoint].publish("", 0, batch)  # no producer round trip to model

    table = network.broker(network.endpoints[0]).table
    setup = Setup(name, [transport] * CONSUMERS, network.endpoints, table, send, 0.0, processing_s)
    return await measure(setup, shape, fixed, seed, round_trip_ms)


def real_run(shape: str, fixed: int | None, seed: int) -> Run:
    """One run on two fresh broker processes on loopback (no fsync: the twin does not model it)."""
    with tempfile.TemporaryDirectory(prefix="prefetch-bench-") as work:
        brokers = [
            BrokerProcess(Path(work) / f"shard-{n}", shard=n, extra_args=["--slots", str(SLOTS)])
            for n in range(SHARDS)
        ]
        try:
            for broker in brokers:
                broker.start()
            return asyncio.run(real_measure(brokers, shape, fixed, seed))
        finally:
            for broker in brokers:
                broker.kill()


async def real_measure(brokers: list[BrokerProcess], shape: str, fixed: int | None, seed: int) -> Run:
    endpoints = [b.endpoint for b in brokers]
    table = RoutingTable(1, SLOTS, tuple(s % SHARDS for s in range(SLOTS)), {}, dict(enumerate(endpoints)))
    publisher = GrpcTransport()
    consumers = [TimedGrpcTransport() for _ in range(CONSUMERS)]
    sequences = dict.fromkeys(endpoints, 0)

    async def send(endpoint: str, batch: list[OutboundMessage]) -> None:
        for first in range(0, len(batch), 1000):  # one batch in flight per producer id
            sequences[endpoint] += 1
            outcomes = await publisher.publish(
                endpoint, f"bench-{endpoint}", sequences[endpoint], batch[first : first + 1000]
            )
            if any(o.status is not PublishStatus.OK for o in outcomes):
                raise RuntimeError(f"{endpoint} refused part of a batch: {outcomes[0]}")

    try:
        for broker, endpoint in zip(brokers, endpoints, strict=True):
            admin = GrpcTransport(admin_token=broker.admin_token)
            await admin.update_routing(endpoint, table)
            await admin.close()
        setup = Setup("real", list(consumers), endpoints, table, send, REAL_TICK_S)
        return await measure(setup, shape, fixed, seed, None)
    finally:
        for transport in [publisher, *consumers]:
            await transport.close()


# --- reports -----------------------------------------------------------------------------------
def best_fixed(runs: list[Run]) -> Run:
    top = max(r.throughput for r in runs)
    return min((r for r in runs if r.throughput >= 0.99 * top), key=lambda r: r.p99_delivery_ms)


def ratio(a: float, b: float) -> float | None:
    """a / b; None when b is zero (a stall-free competitor has no stall ratio)."""
    return round(a / b, 3) if b else None


def paired_median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def grid_cell(group: list[Run]) -> dict[str, Any]:
    fixed = [r for r in group if r.prefetch != "adaptive"]
    adaptive = next(r for r in group if r.prefetch == "adaptive")
    best, f1000 = best_fixed(fixed), next(r for r in fixed if r.prefetch == "1000")
    return {
        "round_trip_ms": adaptive.round_trip_ms,
        "shape": adaptive.shape,
        "best_fixed": best.prefetch,
        "throughput_ratio_vs_best_fixed": ratio(adaptive.throughput, best.throughput),
        "buffer_ratio_vs_fixed_1000": ratio(adaptive.buffered_peak, max(f1000.buffered_peak, 1)),
        "mean_buffer_ratio_vs_fixed_1000": ratio(adaptive.buffered_mean, f1000.buffered_mean),
        "p99_delivery_ms_ratio_vs_best_fixed": ratio(adaptive.p99_delivery_ms, best.p99_delivery_ms),
        "runs": [asdict(r) for r in group],
    }


def summarise_grid(runs: list[Run]) -> dict[str, Any]:
    cells = [
        grid_cell([r for r in runs if r.round_trip_ms == rtt and r.shape == shape])
        for rtt in ROUND_TRIPS_MS
        for shape in SHAPES
    ]
    return {
        "min_throughput_ratio_vs_best_fixed": min(c["throughput_ratio_vs_best_fixed"] for c in cells),
        "max_buffer_ratio_vs_fixed_1000": max(c["buffer_ratio_vs_fixed_1000"] for c in cells),
        "max_mean_buffer_ratio_vs_fixed_1000": max(c["mean_buffer_ratio_vs_fixed_1000"] for c in cells),
        "p99_delivery_ms_ratio_vs_best_fixed": max(c["p99_delivery_ms_ratio_vs_best_fixed"] for c in cells),
        "cells": cells,
    }


MEDIANS = (
    "round_trip_ms",
    "fetch_p50_ms",
    "fetch_p90_ms",
    "processing_ms",
    "per_fetch",
    "throughput",
    "peak_messages",
    "median_messages",
    "peak_bytes",
    "median_bytes",
    "stall_s",
    "p50_delivery_ms",
    "p99_delivery_ms",
)
RATIOS = ("throughput", "peak_messages", "median_messages", "peak_bytes", "stall_s", "p99_delivery_ms")


def medians(runs: list[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: round(statistics.median(getattr(r, name) for r in runs), 2) for name in MEDIANS
    }
    out["budget_ok"] = all(r.budget_ok for r in runs)
    out["rounds"] = len(runs)
    return out


def summarise_compare(runs: list[Run], calibration: dict[str, float]) -> dict[str, Any]:
    """Medians per transport and policy, and the ratios of those medians."""
    figures = {
        f"{transport}/{policy}": medians(
            [r for r in runs if r.transport == transport and r.prefetch == policy]
        )
        for transport in TRANSPORTS
        for policy in ("adaptive", "1000")
    }
    ratios: dict[str, dict[str, float | None]] = {}
    for transport in TRANSPORTS:
        agent, fixed = figures[f"{transport}/adaptive"], figures[f"{transport}/1000"]
        ratios[f"{transport}: adaptive/fixed-1000"] = {n: ratio(agent[n], fixed[n]) for n in RATIOS}
    # Real rounds are noisy: also the median of each round's own ratio (same seed, same minute).
    by_round = {(r.seed, r.prefetch): r for r in runs if r.transport == "real"}
    pairs = [(by_round[seed, "adaptive"], by_round[seed, "1000"]) for seed in range(1, ROUNDS + 1)]
    ratios["real: adaptive/fixed-1000, median of rounds"] = {
        n: paired_median([ratio(getattr(a, n), getattr(f, n)) for a, f in pairs]) for n in RATIOS
    }
    for twin in ("twin", "twin-cal"):
        for policy in ("adaptive", "1000"):
            real, other = figures[f"real/{policy}"], figures[f"{twin}/{policy}"]
            ratios[f"{policy}: real/{twin}"] = {n: ratio(real[n], other[n]) for n in RATIOS}
    return {
        "shape": COMPARE_SHAPE,
        "rounds": ROUNDS,
        "twin_round_trip_ms": COMPARE_RTT_MS,
        "twin_cal": calibration,
        "figures": figures,
        "ratios": ratios,
    }


GRID_HEADER = (
    f"{'rtt':>4} {'shape':>11} {'prefetch':>8} {'msg/s':>8} {'buffered':>9} {'peak':>6} {'p99 ms':>8}"
)
COMPARE_HEADER = (
    f"{'transport':>9} {'prefetch':>8} {'msg/s':>6} {'peak msg':>8} {'med msg':>7} {'peak KiB':>8} "
    f"{'med KiB':>7} {'budget':>6} {'stall s':>7} {'p50 ms':>7} {'p99 ms':>7} {'rtt est':>7} "
    f"{'fetch p50/p90 ms':>16} {'msg/fetch':>9} {'handler ms':>10}"
)


def grid_row(run: Run) -> str:
    return (
        f"{run.round_trip_ms:>4.0f} {run.shape:>11} {run.prefetch:>8} {run.throughput:>8.0f} "
        f"{run.buffered_mean:>9.1f} {run.buffered_peak:>6} {run.p99_delivery_ms:>8.1f}"
    )


def compare_row(name: str, m: dict[str, Any]) -> str:
    transport, policy = name.split("/")
    fetches = f"{m['fetch_p50_ms']:.1f}/{m['fetch_p90_ms']:.1f}"
    return (
        f"{transport:>9} {policy:>8} {m['throughput']:>6.0f} {m['peak_messages']:>8.0f} "
        f"{m['median_messages']:>7.0f} {m['peak_bytes'] / 1024:>8.1f} {m['median_bytes'] / 1024:>7.1f} "
        f"{'yes' if m['budget_ok'] else 'NO':>6} {m['stall_s']:>7.2f} {m['p50_delivery_ms']:>7.0f} "
        f"{m['p99_delivery_ms']:>7.0f} {m['round_trip_ms']:>7.2f} {fetches:>16} "
        f"{m['per_fetch']:>9.1f} {m['processing_ms']:>10.2f}"
    )


def run_grid() -> list[Run]:
    runs: list[Run] = []
    print("twin grid (virtual clock; buffered = both consumers, time average and sampled peak)")
    print(GRID_HEADER)
    for rtt in ROUND_TRIPS_MS:
        for shape in SHAPES:
            for fixed in (*FIXED, None):
                runs.append(run_virtual(lambda: twin_run(rtt, shape, fixed)))  # noqa: B023 - called at once
                print(grid_row(runs[-1]), flush=True)
    return runs


def run_compare() -> tuple[list[Run], dict[str, float]]:
    """Twin and real runs, round by round; then the twin again with the real runs' handler time and
    fetch round trip (medians), to see what of the difference the machine explains."""
    runs: list[Run] = []
    for seed in range(1, ROUNDS + 1):
        order: list[int | None] = [None, 1000] if seed % 2 else [1000, None]
        for fixed in order:
            runs.append(run_virtual(lambda: twin_run(COMPARE_RTT_MS, COMPARE_SHAPE, fixed, seed)))  # noqa: B023
            runs.append(real_run(COMPARE_SHAPE, fixed, seed))
            print(f"-- round {seed}: {runs[-2]}\n-- round {seed}: {runs[-1]}", file=sys.stderr, flush=True)
    real = [r for r in runs if r.transport == "real"]
    calibration = {
        "round_trip_ms": round(statistics.median(r.fetch_p50_ms for r in real), 1),
        "processing_ms": round(statistics.median(r.processing_ms for r in real), 2),
    }
    rtt, mean_s = calibration["round_trip_ms"], calibration["processing_ms"] / 1000
    for seed in range(1, ROUNDS + 1):
        for fixed in (None, 1000):
            calibrated = run_virtual(lambda: twin_run(rtt, COMPARE_SHAPE, fixed, seed, mean_s, "twin-cal"))  # noqa: B023
            runs.append(calibrated)
            print(f"-- round {seed}: {runs[-1]}", file=sys.stderr, flush=True)
    return runs, calibration


def main() -> None:
    started = time.monotonic()
    grid = [] if "--compare-only" in sys.argv else run_grid()
    runs, calibration = run_compare()
    compare = summarise_compare(runs, calibration)
    print(f"\ntwin vs real brokers, {COMPARE_SHAPE} processing, medians of {ROUNDS} rounds per row")
    twin = f"{COMPARE_RTT_MS} ms injected round trip, {1000 * MEAN_PROCESSING_S:g} ms handlers"
    print(f"twin: {twin}; twin-cal: the real runs' median fetch round trip and handler time")
    print(f"({calibration}); buffer figures: one consumer")
    print(COMPARE_HEADER)
    for name, figures in compare["figures"].items():
        print(compare_row(name, figures))
    line: dict[str, Any] = {"compare": compare}
    saved: dict[str, Any] = {"compare": {**compare, "runs": [asdict(r) for r in runs]}}
    if grid:
        saved["grid"] = summarise_grid(grid)
        line["grid"] = {k: v for k, v in saved["grid"].items() if k != "cells"}
    line["wall_s"] = saved["wall_s"] = round(time.monotonic() - started, 1)
    (RESULTS / "prefetch.json").write_text(json.dumps(saved, indent=2) + "\n")
    print(json.dumps(line, separators=(",", ":")))


if __name__ == "__main__":
    main()
