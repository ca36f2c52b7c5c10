"""Producer over the in-memory twin: routing, batching, MOVED / PAUSED, idempotent retries."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import pytest

from foreshard_broker.client.mover import move_slot
from foreshard_broker.client.producer import (
    Producer,
    ProducerFencedError,
    ProducerOptions,
    PublishError,
    SequenceError,
)
from foreshard_broker.client.transport import (
    OutboundMessage,
    PublishOutcome,
    PublishStatus,
    RoutingTable,
    slot_of,
)
from foreshard_broker.client.twin import TwinNetwork, TwinTransport
from foreshard_broker.idempotence import SentBatch

pytestmark = pytest.mark.unit


def stored_by_key(network: TwinNetwork) -> dict[str | None, list[bytes]]:
    """Every stored message, per key, in broker offset order (one list over all shards)."""
    out: dict[str | None, list[bytes]] = defaultdict(list)
    for broker in network.brokers.values():
        for offset in sorted(broker.log):
            stored = broker.log[offset]
            out[stored.key].append(stored.payload)
    return out


def moved_table(table: RoutingTable, slot: int, owner: int) -> RoutingTable:
    owners = list(table.slot_owners)
    owners[slot] = owner
    return RoutingTable(table.epoch + 1, table.num_slots, tuple(owners), table.pinned, table.endpoints)


async def test_each_key_lands_on_its_slot_owner_in_publish_order() -> None:
    network = TwinNetwork(shards=3, num_slots=64)
    async with Producer(TwinTransport(network), network.endpoints) as producer:
        for i in range(300):
            producer.send(f"k{i % 30}", f"{i}".encode())
    per_key = stored_by_key(network)
    assert sorted(per_key) == sorted(f"k{i}" for i in range(30))
    for key, payloads in per_key.items():
        assert payloads == [f"{i}".encode() for i in range(300) if f"k{i % 30}" == key]
    for broker in network.brokers.values():
        assert all(broker.table.owner(s.key or "", s.slot) == broker.shard for s in broker.log.values())


async def test_lost_publish_replies_are_retried_without_duplicates() -> None:
    network = TwinNetwork(shards=2, num_slots=16)
    transport = TwinTransport(network)
    transport.lose_publish_replies = 5
    async with Producer(transport, network.endpoints) as producer:
        await asyncio.gather(*(producer.send("key", f"{i}".encode()) for i in range(50)))
    assert stored_by_key(network)["key"] == [f"{i}".encode() for i in range(50)]
    assert producer.stats.transport_errors == 5


async def test_a_moved_slot_is_followed_to_its_new_owner_without_reordering() -> None:
    network = TwinNetwork(shards=2, num_slots=16)
    key = "order-7"
    slot = slot_of(key, 16)
    old = network.broker(f"twin-{slot % 2}")
    new_owner = 1 - old.shard
    async with Producer(TwinTransport(network), network.endpoints) as producer:
        await producer.publish(key, b"0")
        table = moved_table(old.table, slot, new_owner)
        for broker in network.brokers.values():
            broker.set_table(table)
        await asyncio.gather(*(producer.send(key, f"{i}".encode()) for i in range(1, 20)))
    assert [s.payload for s in old.log.values()] == [b"0"]
    assert [s.payload for s in network.broker(f"twin-{new_owner}").log.values()] == [
        f"{i}".encode() for i in range(1, 20)
    ]
    assert producer.stats.moved >= 1
    assert producer.table is not None and producer.table.epoch == 2


async def test_a_batch_no_broker_saw_follows_its_keys_when_their_shard_is_gone() -> None:
    """The twin of tests/component/test_producer_reroutes.py: a shard removed (scaled in) after its
    slot moved, before the producer heard of the move."""
    network = TwinNetwork(shards=2, num_slots=16)
    key = "order-7"
    slot = slot_of(key, 16)
    old = network.broker(f"twin-{slot % 2}")
    options = ProducerOptions(retry_budget_s=0.5)
    async with Producer(TwinTransport(network), network.endpoints, options=options) as producer:
        await producer.publish(key, b"0")
        table = moved_table(old.table, slot, 1 - old.shard)
        for broker in network.brokers.values():
            broker.set_table(table)
        del network.brokers[f"twin-{old.shard}"]
        await producer.publish(key, b"1")
    assert [s.payload for s in network.broker(f"twin-{1 - old.shard}").log.values()] == [b"1"]
    assert producer.stats.rerouted == 1 and producer.table is not None and producer.table.epoch == 2


async def test_a_batch_whose_outcome_became_unknown_fails_naming_why_and_stays_with_its_broker() -> None:
    """A reply lost, then the broker gone (its slot moved on, it was scaled in): the batch may be
    stored there, so it is never sent elsewhere; the error names what made its outcome unknown,
    not only the last failure."""
    network = TwinNetwork(shards=2, num_slots=16)
    key = "order-7"
    old = network.broker(f"twin-{slot_of(key, 16) % 2}")
    table = moved_table(old.table, slot_of(key, 16), 1 - old.shard)

    class LostThenGone(TwinTransport):
        async def publish(self, *args: Any, **kwargs: Any) -> list[PublishOutcome]:
            try:
                return await super().publish(*args, **kwargs)
            finally:
                if f"twin-{old.shard}" in network.brokers:  # after the first call: moved, scaled in
                    for broker in network.brokers.values():
                        broker.set_table(table)
                    del network.brokers[f"twin-{old.shard}"]

    transport = LostThenGone(network)
    transport.lose_publish_replies = 1
    async with Producer(
        transport, network.endpoints, options=ProducerOptions(retry_budget_s=0.3)
    ) as producer:
        with pytest.raises(PublishError, match="its outcome unknown since: reply lost"):
            await producer.publish(key, b"1")
    assert producer.stats.rerouted == 0
    assert network.broker(f"twin-{1 - old.shard}").log == {}  # not sent to the new owner


async def test_a_paused_slot_holds_its_keys_back_and_other_keys_keep_flowing() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    broker = network.broker("twin-0")
    held, free = "a", next(k for k in (f"b{i}" for i in range(100)) if slot_of(k, 16) != slot_of("a", 16))
    broker.paused.add(slot_of(held, 16))
    async with Producer(TwinTransport(network), network.endpoints) as producer:
        blocked = producer.send(held, b"x")
        await producer.publish(free, b"y")
        await asyncio.sleep(0.05)
        assert not blocked.done()
        broker.resume(slot_of(held, 16))
        await blocked
    assert [s.key for s in broker.log.values()] == [free, held]
    assert producer.stats.paused >= 1
    assert max(producer.stats.stalls) >= 0.04


async def test_a_message_that_cannot_be_stored_in_the_retry_budget_fails_its_future() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    network.broker("twin-0").paused.add(slot_of("stuck", 16))
    options = ProducerOptions(retry_budget_s=0.05)
    async with Producer(TwinTransport(network), network.endpoints, options=options) as producer:
        future = producer.send("stuck", b"x")
        with pytest.raises(PublishError, match="retry budget"):
            await future


async def test_keyless_messages_go_to_the_least_loaded_shard() -> None:
    network = TwinNetwork(shards=2, num_slots=16)
    busy = network.broker("twin-0")
    busy.log.update({i: busy.log.get(i) or _filler(i) for i in range(100)})
    async with Producer(TwinTransport(network), network.endpoints) as producer:
        await asyncio.sleep(0.01)  # let the first backlog poll land
        await asyncio.gather(*(producer.send(None, b"u") for _ in range(10)))
    assert sum(1 for s in network.broker("twin-1").log.values() if s.key is None) == 10


def _filler(offset: int):  # type: ignore[no-untyped-def]
    from foreshard_broker.client.twin import Stored

    return Stored("filler", b"", 0, offset, 0.0)


async def test_an_empty_key_is_refused_before_it_is_sent() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    async with Producer(TwinTransport(network), network.endpoints) as producer:
        with pytest.raises(PublishError, match="empty"):
            producer.send("", b"x")


async def test_a_lost_reply_to_a_partly_refused_batch_loses_nothing() -> None:
    """The resend is a duplicate; the twin (like the broker) refuses again what it refused."""
    network = TwinNetwork(shards=1, num_slots=16)
    broker = network.broker("twin-0")
    held = next(k for k in (f"h{i}" for i in range(100)) if slot_of(k, 16) != slot_of("free", 16))
    broker.paused.add(slot_of(held, 16))
    transport = TwinTransport(network)
    transport.lose_publish_replies = 1
    async with Producer(transport, network.endpoints) as producer:
        sent = [producer.send("free", b"f"), producer.send(held, b"h")]
        await sent[0]
        assert not sent[1].done(), "refused by the original batch: not stored, so not acknowledged"
        broker.resume(slot_of(held, 16))
        await sent[1]
    assert stored_by_key(network) == {"free": [b"f"], held: [b"h"]}
    assert producer.stats.transport_errors == 1


async def test_the_twin_moves_producer_sequences_and_refusals_with_a_slots_group_state() -> None:
    network = TwinNetwork(shards=2, num_slots=16)
    transport = TwinTransport(network)
    key = next(k for k in (f"k{i}" for i in range(100)) if slot_of(k, 16) % 2 == 0)
    other = next(k for k in (f"o{i}" for i in range(100)) if slot_of(k, 16) % 2 == 1)
    a, b = network.broker("twin-0"), network.broker("twin-1")
    batch = [OutboundMessage(key, b"once"), OutboundMessage(other, b"elsewhere")]
    outcomes = a.publish("p", 3, batch)
    assert [o.status for o in outcomes] == [PublishStatus.OK, PublishStatus.MOVED]
    table, _ = await move_slot(transport, a.table, slot_of(key, 16), 1)
    for twin in (a, b):
        assert twin.table == table
    again = b.publish("p", 3, batch)  # the lost reply's resend reaches the new owner
    assert [o.status for o in again] == [PublishStatus.OK, PublishStatus.PAUSED]
    assert [s.payload for s in b.log.values()] == [b"once"]


async def test_a_restarted_producer_with_a_fixed_id_is_stored_never_answered_duplicate() -> None:
    network = TwinNetwork(shards=2, num_slots=16)
    for run in range(3):  # the same id, three incarnations: each starts its sequences at 1 again
        async with Producer(TwinTransport(network), network.endpoints, producer_id="svc") as producer:
            await asyncio.gather(*(producer.send(f"k{i % 4}", f"{run}:{i}".encode()) for i in range(20)))
    stored = sorted(payload for payloads in stored_by_key(network).values() for payload in payloads)
    assert stored == sorted(f"{run}:{i}".encode() for run in range(3) for i in range(20))


async def test_an_older_incarnation_still_running_is_fenced_loudly() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    transport = TwinTransport(network)
    async with Producer(transport, network.endpoints, producer_id="svc") as old:
        await old.publish("k", b"old-1")
        async with Producer(transport, network.endpoints, producer_id="svc") as new:
            await new.publish("k", b"new-1")
            with pytest.raises(ProducerFencedError, match="PRODUCER_FENCED"):
                await old.publish("k", b"old-2")
            await new.publish("k", b"new-2")
    assert stored_by_key(network)["k"] == [b"old-1", b"new-1", b"new-2"]


async def test_a_sequence_error_fails_the_batch_and_the_lane_recovers_under_a_new_epoch() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    broker = network.broker("twin-0")
    async with Producer(TwinTransport(network), network.endpoints, producer_id="svc") as producer:
        await producer.publish("k", b"1")
        lane = "svc.0@twin-0"
        history = broker.producers[lane]
        # The broker knows later batches of this id and epoch than the producer sent (say, another
        # process reusing the id at the same moment): the next sequence is neither new nor a resend.
        for sequence in range(2, 20):
            history.batches.append(SentBatch(sequence, 0, 5, 500))
        with pytest.raises(SequenceError, match="OUT_OF_ORDER_SEQUENCE"):
            await producer.publish("k", b"2")
        first_epoch = history.epoch
        await producer.publish("k", b"3")  # a new epoch: stored, not taken for a resend
        assert broker.producers[lane].epoch > first_epoch
    assert stored_by_key(network)["k"] == [b"1", b"3"]


async def test_a_key_that_finds_the_batch_full_of_bytes_is_sent_in_the_next_one() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    options = ProducerOptions(max_batch_bytes=4096, linger_s=0.0)
    async with Producer(TwinTransport(network), network.endpoints, options=options) as producer:
        sends = [producer.send(f"k{i % 8}", bytes(1024)) for i in range(64)]
        await asyncio.wait_for(asyncio.gather(*sends), 10)
    assert sum(len(p) for p in stored_by_key(network).values()) == 64


class FailingTransport(TwinTransport):
    """Raises an unexpected error (not a TransportError) on its first publish."""

    failures = 1

    async def publish(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise RuntimeError("unexpected")
        return await super().publish(*args, **kwargs)


async def test_an_unexpected_error_fails_the_batch_and_the_key_keeps_flowing() -> None:
    network = TwinNetwork(shards=1, num_slots=16)
    async with Producer(FailingTransport(network), network.endpoints) as producer:
        first = producer.send("key", b"0")
        with pytest.raises(PublishError, match="unexpected"):
            await asyncio.wait_for(first, 10)
        await asyncio.wait_for(producer.send("key", b"1"), 10)
    assert stored_by_key(network)["key"] == [b"1"]


async def test_a_key_whose_back_off_ran_out_during_a_slow_launch_is_still_sent() -> None:
    # The stuck publish of the migration bench: a key refused PAUSED is backed off for a few ms;
    # the launch that skips it is slow (a loaded machine) and its back-off runs out before the
    # dispatch loop picks its next wake-up. Nothing else is in flight to wake it up.
    network = TwinNetwork(shards=1, num_slots=16)
    async with Producer(TwinTransport(network), network.endpoints) as producer:
        launch = producer._launch_batches

        def slow_launch() -> None:
            launch()
            time.sleep(0.06)  # the event loop held up: the back-off below runs out meanwhile

        producer._launch_batches = slow_launch  # type: ignore[method-assign]
        producer._backoff_until["key"] = asyncio.get_running_loop().time() + 0.03
        await asyncio.wait_for(producer.send("key", b"x"), 5)
    assert stored_by_key(network)["key"] == [b"x"]
