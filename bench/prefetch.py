"""Prefetch benchmark: fixed prefetch counts against the adaptive Prefetch Agent, side by side.

Runs over the in-memory twin brokers (``foreshard_broker.client.twin``) with an injected network
round trip, on an event loop with a *virtual clock*: time advances instantly to the next timer when
every task is waiting, so processing times and round trips are exact and the run takes seconds of
CPU, not minutes of wall time.  What is measured is the prefetch policy (how much to fetch, when),
not Python's speed; the SDK's own CPU cost is not modelled.

Workload per cell (round trip x processing shape): 2 consumers of one group, 4 workers each, mean
processing time 2 ms (capacity 4000 msg/s); 20000 keys over 2 shards (the broker holds a key's next
message until the current one is acked, so with few keys per-key chains, not prefetch, set the tail
latency); Poisson arrivals at 600 msg/s for 3 s with a producer burst of 5000 messages (1.25 s of
capacity) at 0.5 s, once the consumers are running (as in production: a burst rarely meets a
consumer that has never measured anything), then drained.  The same seed gives every prefetch
setting the same arrivals and processing times.

* throughput: messages processed / time until the last one was processed
* buffered: messages held by both consumers (buffered + being processed), peak and time-averaged;
  ``max_buffer_ratio_vs_fixed_1000`` uses the peak (what a memory budget must hold), and
  ``max_mean_buffer_ratio_vs_fixed_1000`` the time average
* p99 delivery: 99th percentile of publish -> hand-over to the application, in ms
* best fixed: the fixed count with the highest throughput (ties within 1 % go to the lower p99)

Last line: one JSON object with the cells and the summary ratios (worst cell of each).  Results are
also written to ``bench/results/prefetch.json`` (and the table to ``prefetch.txt`` when redirected).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.prefetch import PrefetchPolicy
from foreshard_broker.client.transport import OutboundMessage, slot_of
from foreshard_broker.client.twin import TwinNetwork, TwinTransport
from foreshard_broker.client.virtual_clock import run_virtual

FIXED = (1, 10, 100, 300, 1000)
ROUND_TRIPS_MS = (1, 10, 50)
SHAPES = ("constant", "exponential", "bursty")
CONSUMERS, WORKERS, MEAN_PROCESSING_S = 2, 4, 0.002
KEYS, SHARDS, SLOTS = 20000, 2, 256
ARRIVAL_RATE, BURST, BURST_EVERY_S, DURATION_S, WARM_UP_S = 600.0, 5000, 2.5, 3.0, 0.5


def processing_times(shape: str, rng: random.Random) -> Callable[[], float]:
    if shape == "constant":
        return lambda: MEAN_PROCESSING_S
    if shape == "exponential":
        return lambda: rng.expovariate(1 / MEAN_PROCESSING_S)
    # bursty: mostly quick, one in ten stalls for 15.5 ms (same 2 ms mean)
    return lambda: 0.0155 if rng.random() < 0.1 else 0.0005


@dataclass
class Cell:
    round_trip_ms: int
    shape: str
    prefetch: str
    throughput: float
    buffered_mean: float
    buffered_peak: int
    p99_delivery_ms: float
    delivered: int


async def publish_workload(network: TwinNetwork, rng: random.Random) -> int:
    """Open-loop arrivals straight into the twin brokers (no producer round trips to model)."""
    loop = asyncio.get_running_loop()
    table = network.broker(network.endpoints[0]).table
    published, next_burst = 0, WARM_UP_S
    start = loop.time()
    while (now := loop.time() - start) < DURATION_S:
        count = 1
        if now >= next_burst:
            count, next_burst = BURST, next_burst + BURST_EVERY_S
        for _ in range(count):
            key = f"key-{rng.randrange(KEYS)}"
            endpoint = table.endpoint(table.owner(key, slot_of(key, SLOTS)))
            network.brokers[endpoint].publish("", 0, [OutboundMessage(key, b"x" * 256)])
            published += 1
        await asyncio.sleep(rng.expovariate(ARRIVAL_RATE))
    return published


async def run_cell(round_trip_ms: int, shape: str, fixed: int | None, seed: int = 1) -> Cell:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    work_rng = random.Random(seed + 1)
    network = TwinNetwork(SHARDS, SLOTS)
    transport = TwinTransport(network, round_trip_s=round_trip_ms / 1000)
    options = ConsumerOptions(
        concurrency=WORKERS,
        fixed_prefetch=fixed,
        prefetch=PrefetchPolicy(max_messages=1000, max_bytes=1 << 20),
    )
    consumers = [
        Consumer(transport, network.endpoints, "bench", f"c{i}", options, registry=CollectorRegistry())
        for i in range(CONSUMERS)
    ]
    latencies: list[float] = []
    last_done = [0.0]
    work = processing_times(shape, work_rng)

    async def handle(message: Message) -> None:
        latencies.append(message.handed_at - message.delivery.publish_time)
        await asyncio.sleep(work())
        last_done[0] = loop.time()

    for consumer in consumers:
        await consumer.start()
    runners = [asyncio.create_task(c.run(handle)) for c in consumers]
    samples: list[int] = []
    sampler = asyncio.create_task(sample_buffers(consumers, samples))
    start = loop.time()
    published = await publish_workload(network, rng)
    while len(latencies) < published and loop.time() - start < DURATION_S * 20:
        await asyncio.sleep(0.05)
    sampler.cancel()
    for consumer in consumers:
        await consumer.close()
    await asyncio.gather(*runners)
    return make_cell(round_trip_ms, shape, fixed, latencies, last_done[0] - start, samples)


def make_cell(
    round_trip_ms: int,
    shape: str,
    fixed: int | None,
    latencies: list[float],
    makespan: float,
    samples: list[int],
) -> Cell:
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]
    return Cell(
        round_trip_ms,
        shape,
        "adaptive" if fixed is None else str(fixed),
        round(len(latencies) / max(makespan, 1e-9), 1),
        round(sum(samples) / max(len(samples), 1), 1),
        max(samples, default=0),
        round(1000 * p99, 2),
        len(latencies),
    )


async def sample_buffers(consumers: list[Consumer], samples: list[int]) -> None:
    while True:
        samples.append(sum(c.buffer.held_messages for c in consumers))
        await asyncio.sleep(0.01)


def best_fixed(cells: list[Cell]) -> Cell:
    top = max(c.throughput for c in cells)
    return min((c for c in cells if c.throughput >= 0.99 * top), key=lambda c: c.p99_delivery_ms)


def summarise(rows: list[Cell]) -> dict[str, Any]:
    cells: list[dict[str, Any]] = []
    thr, buf, mean_buf, lat = [], [], [], []
    for rtt in ROUND_TRIPS_MS:
        for shape in SHAPES:
            group = [c for c in rows if c.round_trip_ms == rtt and c.shape == shape]
            fixed = [c for c in group if c.prefetch != "adaptive"]
            adaptive = next(c for c in group if c.prefetch == "adaptive")
            best = best_fixed(fixed)
            f1000 = next(c for c in fixed if c.prefetch == "1000")
            ratios = {
                "throughput_ratio_vs_best_fixed": round(adaptive.throughput / best.throughput, 3),
                "buffer_ratio_vs_fixed_1000": round(adaptive.buffered_peak / max(f1000.buffered_peak, 1), 3),
                "mean_buffer_ratio_vs_fixed_1000": round(
                    adaptive.buffered_mean / max(f1000.buffered_mean, 1e-9), 3
                ),
                "p99_delivery_ms_ratio_vs_best_fixed": round(
                    adaptive.p99_delivery_ms / best.p99_delivery_ms, 3
                ),
            }
            thr.append(ratios["throughput_ratio_vs_best_fixed"])
            buf.append(ratios["buffer_ratio_vs_fixed_1000"])
            mean_buf.append(ratios["mean_buffer_ratio_vs_fixed_1000"])
            lat.append(ratios["p99_delivery_ms_ratio_vs_best_fixed"])
            cells.append(
                {
                    "round_trip_ms": rtt,
                    "shape": shape,
                    "best_fixed": best.prefetch,
                    **ratios,
                    "runs": [asdict(c) for c in group],
                }
            )
    return {
        "cells": cells,
        "min_throughput_ratio_vs_best_fixed": min(thr),
        "max_buffer_ratio_vs_fixed_1000": max(buf),
        "max_mean_buffer_ratio_vs_fixed_1000": max(mean_buf),
        "p99_delivery_ms_ratio_vs_best_fixed": max(lat),
    }


def format_row(cell: Cell) -> str:
    return (
        f"{cell.round_trip_ms:>4} {cell.shape:>11} {cell.prefetch:>8} {cell.throughput:>8.0f} "
        f"{cell.buffered_mean:>9.1f} {cell.buffered_peak:>6} {cell.p99_delivery_ms:>8.1f}"
    )


def main() -> None:
    started = time.monotonic()
    rows: list[Cell] = []
    print(f"{'rtt':>4} {'shape':>11} {'prefetch':>8} {'msg/s':>8} {'buffered':>9} {'peak':>6} {'p99 ms':>8}")
    for rtt in ROUND_TRIPS_MS:
        for shape in SHAPES:
            for fixed in (*FIXED, None):
                cell = run_virtual(lambda: run_cell(rtt, shape, fixed))  # noqa: B023 - called at once
                rows.append(cell)
                print(format_row(cell), flush=True)
    summary = summarise(rows)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    summary["transport"] = "in-memory twin brokers, injected round trip, virtual clock"
    out = Path(__file__).parent / "results" / "prefetch.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
