"""Per-key accounting with high key cardinality: 1M distinct keys, each published once, to a real broker.

Order ids as keys (the design's own example) make every message a new key. One producer publishes
1000-message batches of never-seen keys (pipelined, 4 in flight) while one consumer group fetches
and acknowledges everything, so the backlog stays small and what grows, if anything, is the
broker's per-key bookkeeping. At 10k, 100k and 1M keys the producer pauses, the consumer catches
up, the broker gets two seconds of idle ticks (cold keys are folded into per-slot aggregates on the
tick), and then the bench records the broker's RSS (/proc/<pid>/status VmRSS) and the median and max
of 7 `GetLoadMetrics(top_keys=10)` calls (what the operator and dashboards poll).

Flat is the target: RSS and GetLoadMetrics latency should not grow with the number of keys ever seen.
Prints a table, then ONE JSON line (the last line); writes bench/results/broker_keys.{json,txt}.
Environment: BENCH_KEYS (default 1000000), BENCH_SYNC (default group).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "broker-image"))

from foreshard_broker.client.broker_client import BrokerClient, publish_request  # noqa: E402
from foreshard_broker.testing import BrokerProcess  # noqa: E402

TOTAL = int(os.environ.get("BENCH_KEYS", "1000000"))
SYNC = os.environ.get("BENCH_SYNC", "group")
MILESTONES = [m for m in (10_000, 100_000, 1_000_000) if m <= TOTAL] or [TOTAL]
BATCH, WINDOW, PAYLOAD = 1000, 4, b"p" * 100
RESULTS = ROOT / "bench" / "results"


def tracked_keys(url: str) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        found = re.search(r"^foreshard_broker_tracked_keys\{[^}]*\} (\S+)$", response.read().decode(), re.M)
    return int(float(found.group(1))) if found else -1


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def publish_range(client: BrokerClient, start: int, end: int, sequence: list[int]) -> None:
    """Keys order-<start> .. order-<end-1>, one message each, WINDOW batches in flight."""
    stream = client.publish_stream()
    sent = 0
    for first in range(start, end, BATCH):
        sequence[0] += 1
        keys = range(first, min(first + BATCH, end))
        await stream.send(publish_request("bench", sequence[0], [(f"order-{k}", PAYLOAD) for k in keys]))
        sent += 1
        if sent >= WINDOW:
            response = await stream.receive()
            assert response.WhichOneof("outcome") == "stored", response
            sent -= 1
    for _ in range(sent):
        response = await stream.receive()
        assert response.WhichOneof("outcome") == "stored", response
    await stream.close()


async def consume(client: BrokerClient, acked: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        messages = await client.fetch("drain", "bench", max_messages=10_000, wait_ms=100)
        if messages:
            await client.ack("drain", [m.offset for m in messages])
            acked[0] += len(messages)


async def load_metrics_latency(admin: Any) -> list[float]:
    timings = []
    for _ in range(7):
        started = time.perf_counter()
        await admin.load_metrics(top_keys=10)
        timings.append(time.perf_counter() - started)
    return timings


async def run() -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        process = BrokerProcess(Path(work), sync=SYNC).start()
        assert process.process is not None
        client, admin = BrokerClient(process.endpoint), process.admin_client()
        await client.create_group("drain")
        acked, stop = [0], asyncio.Event()
        consumer = asyncio.ensure_future(consume(client, acked, stop))
        sequence, published, started = [0], 0, time.perf_counter()
        rows.append(await sample(process, admin, 0, 0.0))
        try:
            for milestone in MILESTONES:
                await publish_range(client, published, milestone, sequence)
                published = milestone
                while acked[0] < published:
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                await asyncio.sleep(2.5)  # idle ticks: the broker folds cold keys once a second
                rows.append(await sample(process, admin, published, elapsed))
                print(row_line(rows[-1]), flush=True)
        finally:
            stop.set()
            await consumer
            await client.close()
            await admin.close()
            process.kill()
    return summary(rows)


async def sample(process: BrokerProcess, admin: Any, keys: int, elapsed: float) -> dict[str, Any]:
    assert process.process is not None
    timings = await load_metrics_latency(admin)
    metrics = await admin.load_metrics(top_keys=10)
    return {
        "keys": keys,
        "rss_mib": round(rss_bytes(process.process.pid) / 2**20, 1),
        "load_metrics_ms_median": round(statistics.median(timings) * 1000, 2),
        "load_metrics_ms_max": round(max(timings) * 1000, 2),
        "keys_reported": len(metrics.keys),
        "tracked_keys": await asyncio.to_thread(tracked_keys, process.http_url),
        "retained_messages": metrics.retained_messages,
        "publish_rate_keys_s": round(keys / elapsed) if elapsed else 0,
    }


def row_line(row: dict[str, Any]) -> str:
    return (
        f"{row['keys']:>9,} keys  RSS {row['rss_mib']:>7.1f} MiB  GetLoadMetrics median "
        f"{row['load_metrics_ms_median']:>7.2f} ms (max {row['load_metrics_ms_max']:.2f})  "
        f"tracked {row['tracked_keys']}  retained {row['retained_messages']}"
    )


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = rows[1], rows[-1]
    return {
        "bench": "broker_keys",
        "sync": SYNC,
        "rows": rows,
        "rss_mib_at_start": rows[0]["rss_mib"],
        "rss_mib_first_milestone": first["rss_mib"],
        "rss_mib_last_milestone": last["rss_mib"],
        "rss_growth_ratio": round(last["rss_mib"] / first["rss_mib"], 2),
        "load_metrics_ms_first": first["load_metrics_ms_median"],
        "load_metrics_ms_last": last["load_metrics_ms_median"],
        "load_metrics_latency_ratio": round(
            last["load_metrics_ms_median"] / max(first["load_metrics_ms_median"], 1e-3), 2
        ),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    result = asyncio.run(run())
    header = (
        "| keys | RSS MiB | GetLoadMetrics median ms | max ms | tracked keys | retained |\n"
        "|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['keys']:,} | {r['rss_mib']} | {r['load_metrics_ms_median']} | {r['load_metrics_ms_max']} "
        f"| {r['tracked_keys']} | {r['retained_messages']} |\n"
        for r in result["rows"]
    )
    print(header + body, end="")
    if TOTAL >= 1_000_000:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "broker_keys.txt").write_text(header + body)
        (RESULTS / "broker_keys.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
