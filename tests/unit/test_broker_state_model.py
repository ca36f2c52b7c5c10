"""Chunked retention against a plain model: random publishes, groups, deliveries, acks, releases and
restarts, and after every step the broker retains exactly what the model says, per key too."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreshard_broker.server.broker import Broker
from foreshard_broker.server.config import Batch, BrokerConfig
from foreshard_broker.storage import MemoryStorage, ReleaseRecord

pytestmark = pytest.mark.unit

KEYS = ["a", "b", "c", ""]
GROUPS = ["g1", "g2"]
Op = tuple[str, int, int]
OPS = st.lists(
    st.tuples(
        st.sampled_from(["publish", "group", "deliver", "release", "restart"]),
        st.integers(0, 7),
        st.integers(1, 6),
    ),
    max_size=40,
)


class Model:
    """What must be retained: every message until each group that holds it has acked it."""

    def __init__(self) -> None:
        self.keys: dict[int, str] = {}  # offset -> key of every message ever stored
        self.holders: dict[int, set[str]] = {}  # retained offset -> groups still holding it
        self.groups: dict[str, int] = {}  # group -> from offset

    def retained(self) -> list[int]:
        return sorted(self.holders)

    def backlog(self) -> Counter[str]:
        return Counter(self.keys[offset] for offset in self.holders)


def open_broker(storage: MemoryStorage) -> Broker:
    broker = Broker(BrokerConfig(num_slots=8), storage)
    broker.open()
    return broker


class Scenario:
    """Applies one operation to the broker and the model alike."""

    def __init__(self) -> None:
        self.storage, self.model = MemoryStorage(), Model()
        self.broker = open_broker(self.storage)
        self.sequence = 0

    async def publish(self, n: int, size: int) -> None:
        self.sequence += 1
        batch = [(KEYS[(n + i) % len(KEYS)], bytes([i]) * (i + 1)) for i in range(size)]
        stored = await self.broker.publish("p", self.sequence, Batch.of(batch))
        for index, (key, _) in enumerate(batch):
            self.model.keys[stored.first_offset + index] = key
            self.model.holders[stored.first_offset + index] = set(self.model.groups)

    async def group(self, n: int, size: int) -> None:
        name, latest, model = GROUPS[n % 2], n >= 4, self.model
        if name in model.groups:
            return
        await self.broker.create_group(name, latest=latest)
        model.groups[name] = self.broker.state.next_offset if latest else 0
        for offset, holders in model.holders.items():
            if offset >= model.groups[name]:
                holders.add(name)

    async def deliver(self, n: int, size: int) -> None:
        model = self.model
        if not model.groups:
            return
        name = sorted(model.groups)[n % len(model.groups)]
        deliveries = await self.broker.fetch(name, "c", size, 0, 0)
        acked = [d.message.offset for d in deliveries[: max(1, len(deliveries) - n % 2)]]
        await self.broker.ack(name, acked)
        for offset in acked:
            model.holders[offset].discard(name)
            if not model.holders[offset]:
                del model.holders[offset]

    async def release(self, n: int, size: int) -> None:
        if not self.model.holders:
            return
        offsets = self.model.retained()[n % len(self.model.holders) :][:size]
        self.broker.state.apply_release(offsets)  # what Admin.release does once the slot moved away
        await self.broker.storage.append(ReleaseRecord(offsets))
        for offset in offsets:
            del self.model.holders[offset]

    async def restart(self, n: int, size: int) -> None:
        await self.storage.close()
        self.broker = open_broker(self.storage)


async def play(ops: list[Op]) -> None:
    scenario = Scenario()
    for op, n, size in ops:
        await getattr(scenario, op)(n, size)
        check(scenario.broker, scenario.model)


def check(broker: Broker, model: Model) -> None:
    state = broker.state
    retained = [m.offset for m in state.retained_messages()]
    assert retained == model.retained()
    assert state.retained_count == len(retained)
    assert state.retained_bytes == sum(len(m.payload) for m in state.retained_messages())
    assert {key: state.backlog(key)[0] for key in KEYS} == {key: model.backlog()[key] for key in KEYS}
    assert state.lowest_retained() == (retained[0] if retained else state.next_offset)
    # A chunk whose messages are all gone is freed (no slow leak), and the offset index agrees.
    assert all(block.live for block in state.blocks.values())
    assert state.starts == sorted(state.blocks)
    for name in model.groups:
        unacked = sorted(m.offset for m in broker.group(name).unacked(lambda m: True))
        assert unacked == sorted(o for o, holders in model.holders.items() if name in holders)


@given(OPS)
@settings(max_examples=200, deadline=None)
def test_retention_matches_the_model_through_acks_releases_and_restarts(ops: list[Op]) -> None:
    asyncio.run(play(ops))
