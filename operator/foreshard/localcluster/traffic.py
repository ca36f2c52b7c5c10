"""Real keyed traffic through a queue's brokers, checked end to end (the demo's and the tests' proof).

    Producer (bootstraps from one broker, routes by the operator's table)
        -> brokers (each stores the keys it owns) -> per-shard counts from GetBacklog
        -> Consumer group (every shard) -> per key: lost, duplicated, out of order

Payloads are `<key>:<sequence>`, so the check needs nothing but what the consumer received.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from foreshard_broker.client.broker_client import BrokerClient
from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer


@dataclass
class Verdict:
    messages: int
    keys: int
    lost: int
    duplicated: int
    reordered: int  # keys whose messages arrived out of publish order
    stored_by_shard: dict[int, int] = field(default_factory=dict)
    publish_s: float = 0.0
    consume_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicated == self.reordered == 0

    @property
    def busiest_shard_share(self) -> float:
        total = sum(self.stored_by_shard.values())
        return max(self.stored_by_shard.values()) / total if total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "ok": self.ok,
            "busiest_shard_share": round(self.busiest_shard_share, 3),
            "publish_msgs_s": round(self.messages / self.publish_s) if self.publish_s else 0,
        }


class Checker:
    """What a consumer saw, judged against what was published (pure bookkeeping)."""

    def __init__(self, published: Mapping[str, int]) -> None:
        self.published = dict(published)  # key -> messages published (sequences 0..n-1)
        self.seen: dict[str, list[int]] = {}

    def record(self, payload: bytes) -> None:
        key, _, sequence = payload.decode().rpartition(":")
        self.seen.setdefault(key, []).append(int(sequence))

    @property
    def received(self) -> int:
        return sum(len(s) for s in self.seen.values())

    def complete(self) -> bool:
        return all(len(set(self.seen.get(k, ()))) == n for k, n in self.published.items())

    def verdict(self) -> tuple[int, int, int]:
        lost = duplicated = reordered = 0
        for key, count in self.published.items():
            got = self.seen.get(key, [])
            lost += count - len(set(got) & set(range(count)))
            duplicated += len(got) - len(set(got))
            reordered += any(b <= a for a, b in itertools.pairwise(got))
        return lost, duplicated, reordered


def keys(count: int) -> list[str]:
    return [f"customer-{i:05d}" for i in range(count)]


async def publish(bootstrap: Sequence[str], messages: int, key_count: int) -> dict[str, int]:
    """Round-robin over `key_count` keys; returns messages per key once every one is stored."""
    published = dict.fromkeys(keys(key_count), 0)
    names = list(published)
    transport = GrpcTransport()
    try:
        async with Producer(transport, list(bootstrap)) as producer:
            pending = []
            for i in range(messages):
                key = names[i % key_count]
                pending.append(producer.send(key, f"{key}:{published[key]}".encode()))
                published[key] += 1
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
    finally:
        await transport.close()
    return published


async def stored_by_shard(endpoints: Mapping[int, str]) -> dict[int, int]:
    counts = {}
    for shard, endpoint in sorted(endpoints.items()):
        client = BrokerClient(endpoint)
        try:
            counts[shard] = int((await client.backlog()).retained_messages)
        finally:
            await client.close()
    return counts


async def consume(bootstrap: Sequence[str], checker: Checker, group: str, timeout_s: float) -> None:
    transport = GrpcTransport()
    consumer = Consumer(
        transport, list(bootstrap), group, f"{group}-0", ConsumerOptions(concurrency=64), CollectorRegistry()
    )

    async def handle(message: Message) -> None:
        checker.record(message.payload)

    await consumer.start()
    running = asyncio.create_task(consumer.run(handle))
    deadline = time.monotonic() + timeout_s
    try:
        while not checker.complete() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a late duplicate would show here
    finally:
        await consumer.close()
        await running
        await transport.close()


async def check(
    endpoints: Mapping[int, str],
    messages: int,
    key_count: int,
    group: str = "traffic-check",
    timeout_s: float = 120,
) -> Verdict:
    """Publish through one broker, count what each shard stored, consume it all and judge."""
    bootstrap = [next(iter(sorted(endpoints.items())))[1]]
    began = time.perf_counter()
    published = await publish(bootstrap, messages, key_count)
    publish_s = time.perf_counter() - began
    stored = await stored_by_shard(endpoints)
    checker = Checker(published)
    began = time.perf_counter()
    await consume(bootstrap, checker, group, timeout_s)
    lost, duplicated, reordered = checker.verdict()
    return Verdict(
        messages, key_count, lost, duplicated, reordered, stored, publish_s, time.perf_counter() - began
    )
