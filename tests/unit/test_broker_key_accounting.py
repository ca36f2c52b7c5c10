"""Per-key accounting stays bounded by active keys: cold keys fold into per-slot aggregates."""

from __future__ import annotations

import itertools
import time

import pytest

from foreshard_broker.routing import slot_of
from foreshard_broker.server.admin import Admin
from foreshard_broker.server.broker import Broker
from foreshard_broker.server.config import Batch, BrokerConfig
from foreshard_broker.server.metrics import BrokerMetrics
from foreshard_broker.storage import BatchRecord, MemoryStorage, Message

pytestmark = pytest.mark.unit

WINDOW = 60.0


def started(max_keys: int = 100_000) -> Broker:
    broker = Broker(BrokerConfig(num_slots=64, rate_window_s=WINDOW), MemoryStorage())
    broker.open()
    broker.load.max_keys = max_keys
    return broker


async def drain(broker: Broker, group: str) -> None:
    while deliveries := await broker.fetch(group, "c", 10_000, 0, 0):
        await broker.ack(group, [d.message.offset for d in deliveries])


async def test_a_million_style_stream_of_new_keys_keeps_per_key_state_bounded_and_slot_totals_exact() -> None:
    broker = started(max_keys=1000)
    await broker.create_group("g", latest=False)
    now = time.monotonic()
    for sequence in range(1, 21):  # 10 000 keys, each published once and consumed at once
        keys = [f"order-{sequence}-{n}" for n in range(500)]
        await broker.publish("p", sequence, Batch(keys, [b"x"] * 500))
        await drain(broker, "g")
        now += 1.0
        broker.load.tick(now)
    tracked = (
        len(broker.state.stored),
        len(broker.state.dropped),
        len(broker.load._acked),
        len(broker.load._slots),
    )
    assert max(tracked) <= 1000, f"per-key entries {tracked} exceed the cap"
    assert broker.load.folded_keys >= 9000
    _, keys, slots = broker.load.rates(now)
    assert sum(s.arrived for s in slots) == 10_000, "folded keys still count in their slot"
    assert sum(s.arrived_bytes for s in slots) == 10_000
    assert len(keys) == broker.load.tracked_keys <= 1000


async def test_a_key_idle_for_a_window_folds_but_a_key_with_backlog_never_does() -> None:
    broker = started()
    await broker.create_group("g", latest=False)
    await broker.publish("p", 1, Batch(["cold", "held"], [b"ab", b"cd"]))
    deliveries = await broker.fetch("g", "c", 10, 0, 0)
    await broker.ack("g", [d.message.offset for d in deliveries if d.message.key == "cold"])
    start = time.monotonic()
    before = {s.slot: (s.arrived, s.ack_rate) for s in broker.load.rates(start + 30)[2]}
    for step in range(1, 9):
        broker.load.tick(start + step * 11)
    assert "cold" not in broker.state.stored and "held" in broker.state.stored
    assert broker.state.backlog("held") == (1, 2) and broker.state.backlog("cold") == (0, 0)
    after = broker.load.rates(start + 88)[2]
    assert {s.slot: s.arrived for s in after} == {slot: arrived for slot, (arrived, _) in before.items()}
    await broker.publish("p", 2, Batch(["cold"], [b"ef"]))  # a folded key that comes back is tracked again
    assert broker.state.backlog("cold") == (1, 2)


async def test_folded_keys_are_still_counted_per_slot_in_the_published_counter() -> None:
    broker = started(max_keys=4)
    metrics = BrokerMetrics(Admin(broker), queue="orders", max_keys=1000)
    await broker.create_group("g", latest=False)
    keys = [f"k{n}" for n in range(40)]
    await broker.publish("p", 1, Batch(keys, [b"x"] * 40))
    await drain(broker, "g")
    broker.load.tick(time.monotonic() + 1)
    page = metrics.render().decode()
    published = [line for line in page.splitlines() if line.startswith("foreshard_messages_published_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in published) == 40
    assert len(published) < 40, "folded keys are summed per slot, not itemised"
    by_slot = {slot_of(key, 64) for key in keys}
    assert any(f'key="",queue="orders",slot="{slot}"' in page for slot in by_slot)


def test_a_migrations_imported_copy_is_stored_but_not_counted_as_arrivals() -> None:
    broker = started()
    copied = [
        Message(offset, "moved", slot_of("moved", 64), b"abc", {}, 0, 1, 100 + offset) for offset in range(5)
    ]
    broker.state.apply_batch(BatchRecord.of("", 0, copied))
    totals = broker.load.totals
    assert broker.state.stored["moved"] == 5, "the copy is held (its backlog moved here)"
    assert totals.arrived.get("moved", 0) == 0, "a copy is not load the producers offered"
    assert sum(totals.slot_arrived.values()) == 0
    published = [Message(5, "moved", slot_of("moved", 64), b"abcd", {}, 0)]
    broker.state.apply_batch(BatchRecord.of("p", 1, published))
    assert broker.load.totals.arrived["moved"] == 1, "what producers publish after the move counts"
    assert broker.load.totals.arrived_bytes["moved"] == 4


def published(page: str) -> dict[str, float]:
    """The published counter's samples by their labels."""
    prefix = "foreshard_messages_published_total{"
    return {
        line.rsplit(" ", 1)[0].removeprefix(prefix).removesuffix("}"): float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith(prefix)
    }


async def test_a_key_that_folds_after_its_own_series_was_scraped_adds_no_arrivals_to_its_slot() -> None:
    # After a slot moves away its keys go idle on the source and fold a window later: the slot's
    # key="" series must not jump by their counts (increase() would read a burst of arrivals).
    broker = started()
    metrics = BrokerMetrics(Admin(broker), queue="orders")
    await broker.create_group("g", latest=False)
    await broker.publish("p", 1, Batch(["idle"] * 30 + ["busy"] * 5, [b"x"] * 35))
    await drain(broker, "g")
    start = time.monotonic()
    broker.load.tick(start)
    before = published(metrics.render().decode())
    slot = slot_of("idle", 64)
    own = f'key="idle",queue="orders",slot="{slot}"'
    summed = f'key="",queue="orders",slot="{slot}"'
    assert before.get(own) == 30 and summed not in before
    for step in range(1, 9):  # "idle" unchanged for more than a window: folded
        if step == 4:
            await broker.publish("p", 2, Batch(["busy"], [b"x"]))
            await drain(broker, "g")
        broker.load.tick(start + step * 11)
    assert "idle" not in broker.state.stored, "the idle key folded"
    after = published(metrics.render().decode())
    assert own not in after
    assert after.get(summed, 0) == 0, "the fold moved no arrivals into the slot's series"
    await broker.publish("p", 3, Batch(["idle"] * 2, [b"x"] * 2))  # it comes back: tracked anew
    again = published(metrics.render().decode())
    assert again.get(summed, 0) == 0 and again[own] == 2


async def test_keys_crossing_the_cap_keep_every_series_a_counter_that_counts_each_arrival_once() -> None:
    broker = started()
    metrics = BrokerMetrics(Admin(broker), queue="orders", max_keys=2)
    seen: list[dict[str, float]] = []
    arrived = 0
    for sequence, batch in enumerate((["a"] * 5 + ["b"] * 4 + ["c"], ["c"] * 8, ["b"] * 9, ["a"] * 2), 1):
        await broker.publish("p", sequence, Batch(batch, [b"x"] * len(batch)))
        arrived += len(batch)
        seen.append(published(metrics.render().decode()))
    for earlier, later in itertools.pairwise(seen):
        for series, value in later.items():
            if series.startswith('key=""') and series in earlier:
                assert value >= earlier[series], f"{series} went down: {earlier[series]} -> {value}"
    # what increase() sums over the scrapes: each series' growth while present, first sample as base
    counted = sum(seen[0].values())
    for earlier, later in itertools.pairwise(seen):
        counted += sum(value - earlier.get(series, value) for series, value in later.items())
    assert counted == arrived, "every arrival counted once, none twice, none lost to a reset"
