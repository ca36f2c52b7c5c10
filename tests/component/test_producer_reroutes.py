"""A shard scaled in before a producer heard that its slots moved away.

The demo's replay saw hundreds of publishes fail with "broker unreachable ... failed to connect":
a key idle while its slot moved never drew a MOVED answer, so its producer still routed it to
the old shard, which the operator had scaled in meanwhile. A batch that never left the client
(no connection could be opened) certainly was not stored, so the producer may send it where the
newest routing table says, instead of waiting out its retry budget for a broker that is gone.
A key whose route did not change still waits (its broker may be restarting) and then fails:
nothing is rerouted on a guess. Real broker processes over gRPC; the old shard is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.mover import move_slot
from foreshard_broker.client.producer import Producer, ProducerOptions, PublishError
from foreshard_broker.client.transport import RoutingTable, slot_of
from foreshard_broker.testing import BrokerProcess
from foreshard_broker.wire import DRAINING

pytestmark = pytest.mark.component

SLOTS = 1024
TOKEN = secrets.token_urlsafe(24)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[BrokerProcess]]:
    started = [BrokerProcess(tmp_path / f"shard-{i}", shard=i, admin_token=TOKEN).start() for i in range(2)]
    yield started
    for process in started:
        process.kill()


@pytest.fixture
async def admin(brokers: list[BrokerProcess]) -> AsyncIterator[GrpcTransport]:
    """The operator's side: both shards routed at epoch 1, slots dealt alternately (slot 0 and
    slot 2 on shard 0, the old one)."""
    transport = GrpcTransport(admin_token=TOKEN)
    for process in brokers:
        await transport.update_routing(process.endpoint, first_table(brokers))
    yield transport
    await transport.close()


def first_table(brokers: list[BrokerProcess]) -> RoutingTable:
    owners = tuple(s % 2 for s in range(SLOTS))
    return RoutingTable(1, SLOTS, owners, {}, {i: b.endpoint for i, b in enumerate(brokers)})


def key_in(slot: int) -> str:
    return next(k for k in (f"key-{i}" for i in range(10_000)) if slot_of(k, SLOTS) == slot)


async def test_a_batch_for_a_shard_that_is_gone_follows_its_slot_and_one_still_routed_there_fails(
    brokers: list[BrokerProcess], admin: GrpcTransport
) -> None:
    old, new = brokers
    table = first_table(brokers)
    moving, staying = key_in(0), key_in(2)  # both on the old shard at first

    transport = GrpcTransport()
    producer = Producer(transport, [new.endpoint], options=ProducerOptions(retry_budget_s=3.0))
    await producer.start()
    try:
        await producer.publish(moving, b"before")
        await producer.publish(staying, b"before")
        assert await transport.backlog(old.endpoint) == 2

        # the slot moves (its backlog with it) while its key is idle; then the old shard goes away
        table, _ = await move_slot(admin, table, 0, 1)
        assert await transport.backlog(new.endpoint) == 1
        old.kill()

        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(producer.publish(moving, b"after"), 10)
        assert loop.time() - started < 3.0  # not the retry budget spent on a dead broker
        assert producer.stats.rerouted == 1
        assert producer.table is not None and producer.table.epoch == table.epoch
        assert await transport.backlog(new.endpoint) == 2  # stored once, on the slot's new owner

        # its slot still belongs to the dead shard: no guess, the retry budget, then a clear error
        with pytest.raises(PublishError, match="broker unreachable"):
            await asyncio.wait_for(producer.publish(staying, b"after"), 10)
        assert producer.stats.rerouted == 1
        assert await transport.backlog(new.endpoint) == 2
    finally:
        await producer.close()
        await transport.close()


async def test_a_draining_shard_sends_a_producer_with_an_old_table_to_the_slots_new_owner(
    brokers: list[BrokerProcess], admin: GrpcTransport
) -> None:
    """SIGTERM on a scaled-in shard drains it before it stops: it refuses what it still owns
    (nothing was stored) but answers MOVED for what moved away, so the producer follows."""
    old, new = brokers
    table = first_table(brokers)
    moving, staying = key_in(0), key_in(2)
    transport = GrpcTransport()
    producer = Producer(transport, [new.endpoint], options=ProducerOptions(retry_budget_s=3.0))
    await producer.start()
    try:
        await producer.publish(moving, b"before")
        table, _ = await move_slot(admin, table, 0, 1)
        drainer = old.admin_client()
        await drainer.drain()
        await drainer.close()

        await asyncio.wait_for(producer.publish(moving, b"after"), 10)
        assert producer.stats.moved >= 1 and producer.stats.rerouted == 0
        assert await transport.backlog(new.endpoint) == 2

        # a slot the draining shard still owns is refused each time (the batch stored nowhere)
        # until the budget runs out: no other shard may take it while the table names this one
        with pytest.raises(PublishError, match=DRAINING):
            await asyncio.wait_for(producer.publish(staying, b"after"), 10)
        assert await transport.backlog(new.endpoint) == 2
    finally:
        await producer.close()
        await transport.close()


async def test_a_shard_stopped_by_sigterm_answers_producers_with_old_tables_until_they_go_quiet(
    brokers: list[BrokerProcess], admin: GrpcTransport
) -> None:
    """The operator's scale-in: the slot moved away, then SIGTERM, while producers that never heard
    of the move send to the old shard. A call the server stopped under would be cancelled: an
    outcome its producer cannot know, so it would resend to the same, vanished broker until its
    retry budget ran out. The draining broker keeps answering (MOVED) until publishes stop, so
    every one of them ends stored on the new owner and none fails."""
    old, new = brokers
    table = first_table(brokers)
    moving = key_in(0)
    transport = GrpcTransport()
    options = ProducerOptions(retry_budget_s=5.0)
    producers = [Producer(transport, [old.endpoint], options=options) for _ in range(40)]
    for producer in producers:
        await producer.start()  # each learns the table in which the old shard owns the slot
    try:
        table, _ = await move_slot(admin, table, 0, 1)
        stopping = asyncio.create_task(asyncio.to_thread(old.terminate))
        sent = []
        for i, producer in enumerate(producers):  # first sends spread around the SIGTERM
            sent.append(producer.send(moving, str(i).encode()))
            await asyncio.sleep(0.002)
        results = await asyncio.gather(*sent, return_exceptions=True)
        assert [r for r in results if r is not None] == []
        assert await stopping == 0  # drained and stopped cleanly
        assert await transport.backlog(new.endpoint) == len(producers)
    finally:
        for producer in producers:
            await producer.close()
        await transport.close()


async def test_a_sigterm_under_publishes_to_slots_it_still_owns_cuts_none_off_mid_call(
    tmp_path: Path,
) -> None:
    """A broker stopped (SIGTERM) while a producer publishes to slots it still owns (no routing
    change: a restart, not a scale-in). Publishes answered while it drains are refused as
    SHARD_DRAINING (nothing stored); none is cut off mid-call by the server stopping, which would
    leave its outcome unknown (CANCELLED), so every failure says plainly that nothing was taken."""
    broker = BrokerProcess(tmp_path / "alone", shard=0).start()
    transport = GrpcTransport()
    producer = Producer(transport, [broker.endpoint], options=ProducerOptions(retry_budget_s=1.5))
    await producer.start()
    try:
        sent = []
        loop = asyncio.get_running_loop()
        stopping = None
        started = loop.time()
        while loop.time() - started < 1.0:
            sent.extend(producer.send(f"key-{i}", b"x") for i in range(20))
            if stopping is None and loop.time() - started > 0.3:
                stopping = asyncio.create_task(asyncio.to_thread(broker.terminate))
            await asyncio.sleep(0.005)
        results = await asyncio.gather(*sent, return_exceptions=True)
        failures = [str(r) for r in results if r is not None]
        assert failures, "publishes after the stop fail (nothing else owns their slots)"
        assert [f for f in failures if "outcome unknown" in f] == []
        assert stopping is not None and await stopping == 0
    finally:
        await producer.close()
        await transport.close()
        broker.kill()
