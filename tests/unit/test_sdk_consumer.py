"""Consumer, acknowledgement coordinator and slot mover over the in-memory twin."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.mover import MoveError, move_slot
from foreshard_broker.client.prefetch import PrefetchPolicy
from foreshard_broker.client.producer import Producer
from foreshard_broker.client.transport import Delivery, FetchRequest, OutboundMessage, RoutingTable, slot_of
from foreshard_broker.client.twin import TwinNetwork, TwinTransport
from foreshard_broker.client.virtual_clock import run_virtual

pytestmark = pytest.mark.unit


async def consume_until(consumer: Consumer, expected: int, seen: list[Message], delay_s: float = 0.0) -> None:
    done = asyncio.Event()

    async def handle(message: Message) -> None:
        seen.append(message)
        if delay_s:
            await asyncio.sleep(delay_s)
        if len(seen) >= expected:
            done.set()

    runner = asyncio.create_task(consumer.run(handle))
    await asyncio.wait_for(done.wait(), 20)
    await consumer.close()
    await runner


def per_key(messages: list[Message]) -> dict[str | None, list[bytes]]:
    out: dict[str | None, list[bytes]] = defaultdict(list)
    for message in messages:
        out[message.key].append(message.payload)
    return out


async def test_every_message_reaches_the_application_once_and_in_key_order() -> None:
    network = TwinNetwork(shards=3, num_slots=64)
    transport = TwinTransport(network)
    async with Producer(transport, network.endpoints) as producer:
        for i in range(2000):
            producer.send(f"k{i % 50}", f"{i}".encode())
    seen: list[Message] = []
    consumer = Consumer(transport, network.endpoints, "g", registry=CollectorRegistry())
    await consumer.start()
    await consume_until(consumer, 2000, seen)
    assert len(seen) == 2000
    for key, payloads in per_key(seen).items():
        assert payloads == [f"{i}".encode() for i in range(2000) if f"k{i % 50}" == key]


async def test_a_key_is_never_processed_by_two_workers_at_once() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    transport = TwinTransport(network)
    async with Producer(transport, network.endpoints) as producer:
        for i in range(400):
            producer.send(f"k{i % 4}", b"x")
    active: set[str | None] = set()
    overlaps = 0
    seen = 0
    done = asyncio.Event()

    async def handle(message: Message) -> None:
        nonlocal overlaps, seen
        overlaps += message.key in active
        active.add(message.key)
        await asyncio.sleep(0.0005)
        active.discard(message.key)
        seen += 1
        if seen == 400:
            done.set()

    consumer = Consumer(
        transport,
        network.endpoints,
        "g",
        options=ConsumerOptions(concurrency=8),
        registry=CollectorRegistry(),
    )
    await consumer.start()
    runner = asyncio.create_task(consumer.run(handle))
    await asyncio.wait_for(done.wait(), 20)
    await consumer.close()
    await runner
    assert overlaps == 0


async def test_a_failed_handler_gets_the_message_again_before_the_keys_later_messages() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    transport = TwinTransport(network)
    async with Producer(transport, network.endpoints) as producer:
        for i in range(5):
            producer.send("k", f"{i}".encode())
    delivered: list[bytes] = []
    failed = False
    done = asyncio.Event()

    async def handle(message: Message) -> None:
        nonlocal failed
        delivered.append(message.payload)
        if message.payload == b"2" and not failed:
            failed = True
            raise RuntimeError("first attempt fails")
        if len(delivered) == 6:
            done.set()

    consumer = Consumer(transport, network.endpoints, "g", registry=CollectorRegistry())
    await consumer.start()
    runner = asyncio.create_task(consumer.run(handle))
    await asyncio.wait_for(done.wait(), 20)
    await consumer.close()
    await runner
    assert delivered == [b"0", b"1", b"2", b"2", b"3", b"4"]


async def test_the_prefetch_buffer_never_exceeds_its_byte_bound_under_a_producer_burst() -> None:
    network = TwinNetwork(shards=4, num_slots=64)
    transport = TwinTransport(network, round_trip_s=0.002)
    bound = 64 * 1024
    options = ConsumerOptions(concurrency=4, prefetch=PrefetchPolicy(max_bytes=bound, max_messages=1000))
    consumer = Consumer(transport, network.endpoints, "g", options=options, registry=CollectorRegistry())
    await consumer.start()
    seen: list[Message] = []
    peaks: list[int] = []

    async def handle(message: Message) -> None:
        seen.append(message)
        peaks.append(consumer.buffer.held_bytes)
        await asyncio.sleep(0.0002)

    runner = asyncio.create_task(consumer.run(handle))
    sizes = random.Random(7)
    async with Producer(transport, network.endpoints) as producer:
        for i in range(3000):  # a burst far larger than the bound: about 3 MB
            producer.send(f"k{i % 500}", bytes(sizes.randint(200, 1800)))
    while len(seen) < 3000:
        await asyncio.sleep(0.01)
    await consumer.close()
    await runner
    assert consumer.buffer.peak_bytes <= bound
    assert max(peaks) > bound // 4  # the bound was actually approached, not trivially met


async def test_acks_and_processing_time_are_exported_for_the_operator() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    transport = TwinTransport(network)
    async with Producer(transport, network.endpoints) as producer:
        for i in range(50):
            producer.send(f"k{i}", b"x")
    registry = CollectorRegistry()
    consumer = Consumer(transport, network.endpoints, "billing", consumer_id="c1", registry=registry)
    await consumer.start()
    await consume_until(consumer, 50, [], delay_s=0.001)
    assert registry.get_sample_value("foreshard_consumer_acks_total", {"group": "billing"}) == 50
    assert (
        registry.get_sample_value("foreshard_consumer_processing_seconds_count", {"group": "billing"}) == 50
    )
    total = registry.get_sample_value("foreshard_consumer_processing_seconds_sum", {"group": "billing"})
    assert total is not None and total >= 50 * 0.001
    assert (
        registry.get_sample_value("foreshard_consumer_ack_rate", {"group": "billing", "consumer": "c1"})
        is not None
    )


async def test_slots_moved_while_producing_and_consuming_keep_order_without_loss_or_duplicates() -> None:
    network = TwinNetwork(shards=3, num_slots=32)
    transport = TwinTransport(network)
    table = network.broker("twin-0").table
    consumer = Consumer(transport, network.endpoints, "g", registry=CollectorRegistry())
    await consumer.start()
    seen: list[Message] = []
    total = 6000

    async def handle(message: Message) -> None:
        seen.append(message)

    runner = asyncio.create_task(consumer.run(handle))
    reports = []
    async with Producer(transport, network.endpoints) as producer:
        for i in range(total):
            producer.send(f"k{i % 200}", f"{i}".encode())
            if i % 500 == 250:
                slot = i % 32
                table, report = await move_slot(transport, table, slot, (table.slot_owners[slot] + 1) % 3)
                reports.append(report)
            if i % 50 == 0:
                await asyncio.sleep(0)
    while len(seen) < total:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    await consumer.close()
    await runner
    assert len(reports) == 12 and all(r.inflight_at_switch == 0 for r in reports)
    assert len(seen) == total
    for key, payloads in per_key(seen).items():
        assert payloads == [f"{i}".encode() for i in range(total) if f"k{i % 200}" == key]


async def test_moving_a_slot_to_its_own_owner_is_refused() -> None:
    network = TwinNetwork(shards=2, num_slots=4)
    table = network.broker("twin-0").table
    with pytest.raises(MoveError):
        await move_slot(TwinTransport(network), table, 0, table.slot_owners[0])


async def test_two_consumers_share_a_burst_over_pipelined_fetches_without_stalling() -> None:
    # Pipelined fetches (one long-poll, the others answering at once, often empty while every key's
    # head is out) must keep both members of the group busy until the burst is drained.
    network = TwinNetwork(shards=2, num_slots=64)
    transport = TwinTransport(network, round_trip_s=0.01)
    counts = {"c0": 0, "c1": 0}
    options = ConsumerOptions(concurrency=4)
    consumers = [
        Consumer(transport, network.endpoints, "g", name, options, CollectorRegistry()) for name in counts
    ]
    for consumer in consumers:
        await consumer.start()

    def handler_for(name: str) -> Callable[[Message], Awaitable[None]]:
        async def handle(message: Message) -> None:
            counts[name] += 1
            await asyncio.sleep(0.002)

        return handle

    runners = [asyncio.create_task(c.run(handler_for(c.consumer_id))) for c in consumers]
    async with Producer(transport, network.endpoints) as producer:
        for i in range(3000):
            producer.send(f"k{i}", b"x")
    deadline = asyncio.get_running_loop().time() + 20
    while sum(counts.values()) < 3000 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    for consumer in consumers:
        await consumer.close()
    await asyncio.gather(*runners)
    assert sum(counts.values()) == 3000
    assert min(counts.values()) > 3000 // 4


def test_a_burst_after_a_quiet_spell_is_shared_by_both_consumers_of_a_group() -> None:
    # The prefetch benchmark's workload on a virtual clock (deterministic, under a second of CPU):
    # after a quiet spell the agent must grow the pipeline again, in both members of the group.
    async def scenario() -> dict[str, int]:
        loop = asyncio.get_running_loop()
        network = TwinNetwork(shards=2, num_slots=256)
        transport = TwinTransport(network, round_trip_s=0.01)
        counts = {"c0": 0, "c1": 0}
        consumers = [
            Consumer(
                transport, network.endpoints, "g", name, ConsumerOptions(concurrency=4), CollectorRegistry()
            )
            for name in counts
        ]

        def handler_for(name: str) -> Callable[[Message], Awaitable[None]]:
            async def handle(message: Message) -> None:
                counts[name] += 1
                await asyncio.sleep(0.002)

            return handle

        for consumer in consumers:
            await consumer.start()
        runners = [asyncio.create_task(c.run(handler_for(c.consumer_id))) for c in consumers]
        rng = random.Random(1)
        table = network.broker("twin-0").table
        for i in range(5000 + 1800):  # a quiet 600/s, a 5000-message burst at 0.5 s, quiet again
            key = f"key-{rng.randrange(20000)}"
            endpoint = table.endpoint(table.owner(key, slot_of(key, 256)))
            network.brokers[endpoint].publish("", 0, [OutboundMessage(key, b"x" * 256)])
            if not 300 <= i < 5300:
                await asyncio.sleep(rng.expovariate(600))
        while sum(counts.values()) < 6800 and loop.time() < 30:
            await asyncio.sleep(0.05)
        for consumer in consumers:
            await consumer.close()
        await asyncio.gather(*runners)
        return counts

    counts = run_virtual(scenario)
    assert sum(counts.values()) == 6800
    assert min(counts.values()) > 6800 // 4


class CountingTwin(TwinTransport):
    """Counts fetches per endpoint."""

    def __init__(self, network: TwinNetwork) -> None:
        super().__init__(network)
        self.fetches: dict[str, int] = defaultdict(int)

    async def fetch(self, endpoint: str, request: FetchRequest) -> list[Delivery]:
        self.fetches[endpoint] += 1
        return await super().fetch(endpoint, request)


async def test_a_shard_removed_from_the_routing_table_is_no_longer_fetched_from() -> None:
    network = TwinNetwork(shards=2, num_slots=16)
    transport = CountingTwin(network)
    options = ConsumerOptions(routing_refresh_s=0.01, fetch_wait_s=0.02)
    consumer = Consumer(transport, network.endpoints, "g", options=options, registry=CollectorRegistry())
    await consumer.start()
    await asyncio.sleep(0.05)
    assert transport.fetches["twin-1"] > 0
    old = network.broker("twin-0").table
    shrunk = RoutingTable(old.epoch + 1, old.num_slots, (0,) * old.num_slots, {}, {0: "twin-0"})
    for broker in network.brokers.values():
        broker.set_table(shrunk)
    await asyncio.sleep(0.1)  # a refresh, and the long-poll in flight then ends
    removed, stayed = transport.fetches["twin-1"], transport.fetches["twin-0"]
    await asyncio.sleep(0.2)
    await consumer.close()
    assert sorted(consumer._loops) == ["twin-0"]
    assert transport.fetches["twin-1"] == removed
    assert transport.fetches["twin-0"] > stayed
