"""A shard scaled in and re-created at the same endpoint with its old data, then given slots back.

What a StatefulSet does with a kept volume: shard A's slots move to shard B (copy, fence, switch,
release), A is scaled in (SIGKILL here), and a later scale-out re-creates A with the same pod name,
the same port and the same data directory; then slots move back onto A. A producer publishes
ordered keys and a consumer group consumes and acks throughout, over real broker processes on
loopback. Every message whose publish the broker acknowledged must reach the group, each key's
deliveries must never go back (a redelivery repeats the last message, it never replays older
ones), and the duplicates are reported.

Variants: A released every moved slot before it went away (`drained`, with and without a
consumer backlog), or it was killed before any release (`undrained`): its old copy of the slots,
their group state, producer histories and import marks are still on disk when it comes back and
takes the slots again. Before the target dropped such an old copy at its first import, that copy's
pending messages were delivered again after the newer ones (2116 duplicates, every key of the
moved slots going back), though no acknowledged message was lost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.mover import move_slot
from foreshard_broker.client.producer import Producer
from foreshard_broker.client.transport import RoutingTable, Selection, slot_of
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component

SLOTS = 1024
TOKEN = secrets.token_urlsafe(24)
B, A = 0, 1  # B stays; A (the highest ordinal, as a StatefulSet scales in) goes and comes back
A_SLOTS = (3, 17, 64, 200, 511, 777)
KEYS_PER_A_SLOT, B_KEYS = 6, 12
ROUND_S = 0.02  # one message per key per round: about 2000 messages a second
DOWN_S = 2.0  # how long A stays scaled in


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[dict[int, BrokerProcess]]:
    started = {i: BrokerProcess(tmp_path / f"shard-{i}", shard=i, admin_token=TOKEN).start() for i in (B, A)}
    yield started
    for process in started.values():
        process.kill()


class HeldRelease(GrpcTransport):
    """A mover whose release (the drain) never reaches the held endpoints: a shard killed before
    its drain keeps its copy of the moved slots on disk."""

    def __init__(self, token: str, held: set[str]) -> None:
        super().__init__(admin_token=token)
        self.held = held

    async def release(self, endpoint: str, selection: Selection) -> None:
        if endpoint not in self.held:
            await super().release(endpoint, selection)


def keys_in(slots: tuple[int, ...], per_slot: int) -> list[str]:
    found: dict[int, list[str]] = {slot: [] for slot in slots}
    n = 0
    while any(len(keys) < per_slot for keys in found.values()):
        key = f"key-{n}"
        slot = slot_of(key, SLOTS)
        if slot in found and len(found[slot]) < per_slot:
            found[slot].append(key)
        n += 1
    return [key for keys in found.values() for key in keys]


@dataclass
class Ledger:
    sent: list[tuple[str, int, asyncio.Future[None]]] = field(default_factory=list)
    delivered: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def acked(self) -> set[tuple[str, int]]:
        return {(k, i) for k, i, f in self.sent if f.done() and not f.cancelled() and f.exception() is None}

    def seen(self) -> set[tuple[str, int]]:
        return {(k, i) for k, sequence in self.delivered.items() for i in sequence}


def with_endpoints(table: RoutingTable, endpoints: dict[int, str]) -> RoutingTable:
    return RoutingTable(table.epoch + 1, table.num_slots, table.slot_owners, dict(table.pinned), endpoints)


@pytest.mark.parametrize(
    ("drained", "handling_s"),
    [(True, 0.0005), (True, 0.004), (False, 0.004)],
    ids=["drained", "drained-backlog", "undrained-backlog"],
)
async def test_a_shard_recreated_on_its_old_data_loses_and_reorders_nothing_when_slots_move_back(
    shards: dict[int, BrokerProcess], drained: bool, handling_s: float
) -> None:
    a, b = shards[A], shards[B]
    endpoint_a = a.endpoint
    admin = GrpcTransport(admin_token=TOKEN) if drained else HeldRelease(TOKEN, {endpoint_a})
    table = RoutingTable(
        1,
        SLOTS,
        tuple(A if slot in A_SLOTS else B for slot in range(SLOTS)),
        {},
        {B: b.endpoint, A: a.endpoint},
    )
    for process in (a, b):
        await admin.update_routing(process.endpoint, table)
    b_slots = tuple(s for s in range(SLOTS) if s not in A_SLOTS)[:: SLOTS // B_KEYS][:B_KEYS]
    keys = keys_in(A_SLOTS, KEYS_PER_A_SLOT) + keys_in(b_slots, 1)
    ledger = Ledger()
    started = time.monotonic()

    async def handle(message: Message) -> None:
        assert message.key is not None
        ledger.delivered[message.key].append(int(message.payload))
        await asyncio.sleep(handling_s)  # 4 ms: slower than the producer, the moves carry a backlog

    data = GrpcTransport()
    options = ConsumerOptions(concurrency=4, routing_refresh_s=0.2)
    consumer = Consumer(data, [b.endpoint], "recreated", "c0", options, CollectorRegistry())
    await consumer.start()
    runner = asyncio.create_task(consumer.run(handle))
    producer = Producer(data, [b.endpoint])
    await producer.start()
    stop = asyncio.Event()

    async def publish() -> None:
        counts = dict.fromkeys(keys, 0)
        while not stop.is_set():
            for key in keys:
                ledger.sent.append((key, counts[key], producer.send(key, str(counts[key]).encode())))
                counts[key] += 1
            await asyncio.sleep(ROUND_S)

    publisher = asyncio.create_task(publish())
    try:
        await asyncio.sleep(1.0)
        for slot in A_SLOTS:  # A's slots move to B, each drained (or not) on A
            table, _ = await move_slot(admin, table, slot, B)
        await asyncio.sleep(0.3)

        a.kill()  # scale-in; the operator pushes the table without A to the shards left
        table = with_endpoints(table, {B: b.endpoint})
        await admin.update_routing(b.endpoint, table)
        await asyncio.sleep(DOWN_S)

        a.keep_ports = True  # scale-out: the same pod, port and volume
        a.start()
        assert a.endpoint == endpoint_a
        table = with_endpoints(table, {B: b.endpoint, A: a.endpoint})
        for process in (a, b):
            await admin.update_routing(process.endpoint, table)
        await asyncio.sleep(0.5)
        for slot in A_SLOTS:  # and the slots move back onto A
            table, _ = await move_slot(admin, table, slot, A)
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await publisher
        await producer.close()

    acked = ledger.acked()
    deadline = time.monotonic() + 60
    while not acked <= ledger.seen() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything arriving now is a duplicate
    await consumer.close()
    await runner
    await data.close()
    await admin.close()

    seen = ledger.seen()
    deliveries = sum(map(len, ledger.delivered.values()))
    lost = sorted(acked - seen)
    back = {
        key: sequence
        for key, sequence in ledger.delivered.items()
        if any(later < earlier for earlier, later in itertools.pairwise(sequence))
    }
    summary = {
        "variant": "drained" if drained else "undrained",
        "published": len(ledger.sent),
        "acked": len(acked),
        "failed": len(ledger.sent) - len(acked),
        "delivered": deliveries,
        "distinct_delivered": len(seen),
        "lost": len(lost),
        "duplicates": deliveries - len(seen),
        "keys_going_back": len(back),
        "seconds": round(time.monotonic() - started, 1),
    }
    print("recreated-shard:", json.dumps(summary))
    assert len(acked) == len(ledger.sent), f"publishes failed: {summary}"
    assert not lost, f"{len(lost)} acknowledged messages never delivered, e.g. {lost[:5]}: {summary}"
    example = next(iter(back.items()), None)
    assert not back, f"{len(back)} keys delivered out of order, e.g. {example}: {summary}"
    # undrained: the re-created shard found its old copy of the slots and dropped it at the import
    assert ("dropped an old copy" in a.logs()) is not drained
