"""The consumer's memory budget against a real broker: `PrefetchPolicy.max_bytes` is a hard bound.

The twin version of this lives in the unit tests; here the bytes asked for go over gRPC to a broker
process that decides itself how much to answer (and may answer one message larger than asked), so
the bound is checked where it can actually be broken.  A backlog far larger than the budget, with
message sizes that vary, is consumed by the adaptive agent and by a fixed prefetch of 1000.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.prefetch import PrefetchPolicy
from foreshard_broker.client.producer import Producer
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component

BOUND, MESSAGES, KEYS = 64 * 1024, 3000, 500


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "shard-0").start()
    yield process
    process.kill()


@pytest.mark.parametrize("fixed", [None, 1000], ids=["adaptive", "fixed-1000"])
async def test_the_consumer_never_holds_more_bytes_than_its_budget_from_a_real_broker(
    broker: BrokerProcess, fixed: int | None
) -> None:
    sizes = random.Random(7)
    published = [
        (f"k{i % KEYS}", i.to_bytes(4, "big") + bytes(sizes.randint(200, 1800))) for i in range(MESSAGES)
    ]
    transport = GrpcTransport()
    async with Producer(transport, [broker.endpoint]) as producer:
        await asyncio.gather(*(producer.send(key, payload) for key, payload in published))  # ~3 MB backlog

    policy = PrefetchPolicy(max_messages=1000, max_bytes=BOUND)
    options = ConsumerOptions(concurrency=4, prefetch=policy, fixed_prefetch=fixed)
    consumer = Consumer(transport, [broker.endpoint], "budget", options=options, registry=CollectorRegistry())
    seen: list[tuple[str | None, bytes]] = []
    held: list[int] = []

    async def handle(message: Message) -> None:
        seen.append((message.key, message.payload))
        held.append(consumer.buffer.held_bytes)
        await asyncio.sleep(0.0002)

    await consumer.start()
    runner = asyncio.create_task(consumer.run(handle))
    async with asyncio.timeout(60):
        while len(seen) < MESSAGES:
            await asyncio.sleep(0.02)
    await consumer.close()
    await runner
    await transport.close()

    assert consumer.buffer.peak_bytes <= BOUND
    assert max(held) > BOUND // 4, "the budget was approached, not trivially met"
    for key in {key for key, _ in published}:
        assert [p for k, p in seen if k == key] == [p for k, p in published if k == key], key
