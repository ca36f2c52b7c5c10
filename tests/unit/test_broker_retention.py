"""Consumer groups and retention: a forgotten group cannot stop the shard, and deleting it frees it.

Policy under test (docs/broker.md "Retention"): past `retention_max_bytes` (or older than
`retention_max_age_s`) the oldest messages are dropped for every group still holding them, counted
per group; the hard `max_retained_bytes` cap refuses publishes only if retention cannot make room.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from foreshard_broker.server import errors
from foreshard_broker.server.broker import Broker
from foreshard_broker.server.config import Batch, BrokerConfig, Limits
from foreshard_broker.storage import MemoryStorage, SegmentLogStorage

pytestmark = pytest.mark.unit

PAYLOAD = b"x" * 1000


def broker(storage: MemoryStorage, retention_bytes: int = 0, retention_age: float = 0) -> Broker:
    config = BrokerConfig(
        limits=Limits(max_retained_bytes=20_000),
        retention_max_bytes=retention_bytes,
        retention_max_age_s=retention_age,
    )
    made = Broker(config, storage)
    made.open()
    return made


def batch(sequence: int, count: int = 5) -> Batch:
    return Batch([f"k{(sequence + n) % 3}" for n in range(count)], [PAYLOAD] * count)


async def consume_all(target: Broker, group: str) -> int:
    taken = 0
    while deliveries := await target.fetch(group, "c", 1000, 0, 0):
        await target.ack(group, [d.message.offset for d in deliveries])
        taken += len(deliveries)
    return taken


async def test_without_retention_a_forgotten_group_stops_publishing_at_the_memory_cap() -> None:
    target = broker(MemoryStorage())
    await target.create_group("forgotten", latest=False)
    for sequence in range(1, 5):
        await target.publish("p", sequence, batch(sequence))
    with pytest.raises(errors.Overloaded, match="unacknowledged bytes"):
        await target.publish("p", 5, batch(5))


async def test_past_the_bytes_limit_the_oldest_messages_are_dropped_for_the_lagging_group_only() -> None:
    storage = MemoryStorage()
    target = broker(storage, retention_bytes=10_000)
    await target.create_group("forgotten", latest=False)
    await target.create_group("live", latest=False)
    consumed = 0
    for sequence in range(1, 41):  # 200 kB through a 10 kB retention and a 20 kB cap
        await target.publish("p", sequence, batch(sequence))
        consumed += await consume_all(target, "live")
    assert consumed == 200, "the live group lost messages to retention although it kept up"
    assert target.state.retained_bytes <= 10_000
    assert target.state.expired["forgotten"] == 200 - target.state.groups["forgotten"].backlog
    assert target.state.expired["live"] == 0
    kept = sorted(m.offset for m in target.state.retained_messages())
    assert kept == list(range(200 - len(kept), 200)), "retention must drop the oldest first"
    again = broker(storage, retention_bytes=10_000)  # replay rebuilds the same retained set
    assert sorted(m.offset for m in again.state.retained_messages()) == kept


async def test_messages_older_than_the_age_limit_are_dropped_on_the_periodic_pass() -> None:
    target = broker(MemoryStorage(), retention_age=60)
    await target.create_group("forgotten", latest=False)
    await target.publish("p", 1, batch(1))
    published_ms = target.state.message(0).publish_time_ms
    assert target.expire_by_age(published_ms + 59_000) == 0
    assert target.expire_by_age(published_ms + 61_000) == 5
    assert target.state.retained_count == 0 and target.state.expired["forgotten"] == 5
    assert await target.fetch("forgotten", "c", 10, 0, 0) == []


async def test_deleting_a_group_frees_what_only_it_held_and_survives_a_restart() -> None:
    storage = MemoryStorage()
    target = broker(storage)
    await target.create_group("forgotten", latest=False)
    await target.create_group("live", latest=False)
    for sequence in range(1, 4):
        await target.publish("p", sequence, batch(sequence))
    await target.publish("p", 4, Batch(["", ""], [PAYLOAD, PAYLOAD]))  # keyless ones too
    in_flight = await target.fetch("forgotten", "c", 2, 0, 0)
    assert len(in_flight) == 2
    assert await consume_all(target, "live") == 17
    with pytest.raises(errors.Overloaded):
        await target.publish("p", 5, batch(5, count=5))
    assert await target.delete_group("forgotten") == (True, 17)
    assert target.state.retained_count == 0 and target.state.retained_bytes == 0
    assert await target.delete_group("forgotten") == (False, 0)
    with pytest.raises(errors.NotFound):
        await target.fetch("forgotten", "c", 10, 0, 0)
    assert (await target.publish("p", 5, batch(5))).count == 5  # publishing works again
    again = broker(storage)
    assert set(again.state.groups) == {"live"} and again.state.retained_count == 5


async def test_a_fetch_waiting_on_a_deleted_group_ends_with_not_found() -> None:
    target = broker(MemoryStorage())
    await target.create_group("g", latest=False)
    waiting = asyncio.ensure_future(target.fetch("g", "c", 10, 0, 5000))
    await asyncio.sleep(0)
    await target.delete_group("g")
    with pytest.raises(errors.NotFound, match="deleted"):
        await asyncio.wait_for(waiting, 5)


async def test_retention_never_drops_a_batch_still_on_its_way_to_disk_so_a_replay_agrees(
    tmp_path: Path,
) -> None:
    def opened() -> Broker:
        config = BrokerConfig(limits=Limits(max_retained_bytes=20_000), retention_max_bytes=6_000)
        made = Broker(config, SegmentLogStorage(tmp_path, sync="group"))
        made.open()
        return made

    target = opened()
    await target.create_group("forgotten", latest=False)
    await target.publish("p", 1, batch(1))
    # Two publishes in one loop turn: the second one's retention pass runs while the first batch is
    # accepted but not yet durable (group commit); it must not cut into that batch, which replay
    # would apply before the expiry record.
    await asyncio.gather(target.publish("p", 2, batch(2)), target.publish("q", 1, batch(1)))
    live = sorted(m.offset for m in target.state.retained_messages())
    assert set(range(5, 15)) <= set(live), live
    await target.storage.close()
    assert sorted(m.offset for m in opened().state.retained_messages()) == live
