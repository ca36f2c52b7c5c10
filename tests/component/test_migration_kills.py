"""SIGKILL the source or the target broker at each phase of a slot move, under live load.

A producer publishes numbered messages over 48 keys (8 of them in the moving slot) and a consumer
group consumes them, while one slot moves back and forth between two brokers. In each case the move
runs phase by phase; after the named phase the named broker is SIGKILLed and restarted on the same
port, and the move recovers as the orchestrator would: before the switch it rolls back (Unfence on
the source, Discard on the target) and runs again from scratch with a new lease; from the switch
on it rolls forward. A per-key checker then proves every key's sequence arrived complete and in
order. A kill can lose an acknowledgement that was on its way, so the killed broker delivers that
message again right after itself; those immediate repeats are counted and reported, any other
repeat, gap or reordering fails the test.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from migration_load import SLOTS, Load, free_port, keys_for
from prometheus_client import CollectorRegistry

from foreshard_broker.client.consumer import Consumer, ConsumerOptions
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.mover import moved
from foreshard_broker.client.producer import Producer
from foreshard_broker.client.transport import RoutingTable, Selection, TransportError, slot_of
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component

TOKEN = secrets.token_urlsafe(24)
PHASES = ("copy-ahead", "fence", "switch-source", "switch-target", "release")
SWITCHED = PHASES.index("switch-source")  # the kill after this phase or later rolls forward
T = TypeVar("T")


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[BrokerProcess]]:
    """Two brokers on fixed ports, so a restarted one is found where it was."""
    started = [
        BrokerProcess(
            tmp_path / f"shard-{i}",
            shard=i,
            admin_token=TOKEN,
            extra_args=["--grpc-listen", f"127.0.0.1:{free_port()}", "--ack-deadline", "2"],
        ).start()
        for i in range(2)
    ]
    yield started
    for process in started:
        process.kill()


@pytest.fixture
async def transport(brokers: list[BrokerProcess]) -> AsyncIterator[GrpcTransport]:
    opened = GrpcTransport(admin_token=TOKEN)
    table = RoutingTable(
        1, SLOTS, tuple(s % 2 for s in range(SLOTS)), {}, {i: b.endpoint for i, b in enumerate(brokers)}
    )
    for process in brokers:
        await opened.update_routing(process.endpoint, table)
    yield opened
    await opened.close()


async def retried(call: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """Retry while the broker is unreachable (restarting); a refusal is raised at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except TransportError as error:
            if error.refused or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@dataclass
class SlotMove:
    """One move, phase by phase, as the operator's state machine performs it."""

    transport: GrpcTransport
    table: RoutingTable
    slot: int
    target: int
    lease: str
    ahead: int = 0
    high: int = 0
    pause_s: float = 0.0
    _fenced_at: float = 0.0

    @property
    def source(self) -> int:
        return self.table.slot_owners[self.slot]

    @property
    def new_table(self) -> RoutingTable:
        return moved(self.table, self.slot, self.target)

    def endpoints(self) -> tuple[str, str]:
        return self.table.endpoint(self.source), self.table.endpoint(self.target)

    async def phase(self, name: str) -> None:
        t, (source, target), selection = self.transport, self.endpoints(), Selection(slots=(self.slot,))
        if name == "copy-ahead":
            self.ahead = await t.copy_backlog(source, target, selection, 0)
        elif name == "fence":
            self._fenced_at = time.perf_counter()
            fenced = await t.fence(source, target, selection, self.lease, 3.0, self.ahead, 2.0)
            self.high = fenced.high_offset
        elif name == "switch-source":
            await t.switch_source(source, target, self.new_table, selection, self.high)
        elif name == "switch-target":
            await t.update_routing(target, self.new_table)
            self.pause_s = time.perf_counter() - self._fenced_at
        else:
            await t.release(source, selection)

    async def roll_back(self) -> None:
        source, target = self.endpoints()
        await retried(lambda: self.transport.unfence(source, self.lease))
        await retried(lambda: self.transport.discard(target, Selection(slots=(self.slot,))))

    async def run(self, phases: tuple[str, ...] = PHASES) -> None:
        for name in phases:
            await retried(lambda name=name: self.phase(name))  # type: ignore[misc]


async def test_killing_either_broker_at_any_phase_of_a_move_loses_reorders_and_duplicates_nothing(
    brokers: list[BrokerProcess], transport: GrpcTransport
) -> None:
    endpoints = [b.endpoint for b in brokers]
    table = await transport.routing(endpoints[0])
    slot = slot_of("key-0", SLOTS)
    load = Load(keys_for(slot))
    consumer = Consumer(
        transport,
        endpoints,
        "g",
        "c",
        ConsumerOptions(concurrency=8, routing_refresh_s=0.2),
        CollectorRegistry(),
    )
    await consumer.start()
    consuming = asyncio.create_task(consumer.run(load.handle))
    pauses: list[float] = []
    async with Producer(transport, endpoints) as producer:
        producing = asyncio.create_task(load.produce(producer))
        for case, (after, victim) in enumerate((p, v) for p in PHASES for v in ("source", "target")):
            await asyncio.sleep(0.2)  # load flows between cases
            move = SlotMove(transport, table, slot, 1 - table.slot_owners[slot], f"case-{case}/1")
            upto = PHASES.index(after)
            await move.run(PHASES[: upto + 1])
            await asyncio.to_thread(brokers[move.source if victim == "source" else move.target].restart)
            if upto < SWITCHED:  # before the switch: roll back, then the move runs again
                await move.roll_back()
                move = SlotMove(transport, table, slot, move.target, f"case-{case}/2")
                await move.run()
            else:  # from the switch on: roll forward
                await move.run(PHASES[upto + 1 :])
            if move.pause_s:
                pauses.append(move.pause_s * 1000)
            table = move.new_table
        load.stop.set()
        await producing
    deadline = time.monotonic() + 60
    while not load.complete() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await consumer.close()
    await consuming

    wrong, repeats = load.check()
    report = {
        "kills": len(PHASES) * 2,
        "phases_covered": len(PHASES),
        "messages": sum(load.sent.values()),
        "repeats_after_kill": repeats,
        "pause_ms_p50": round(statistics.median(pauses), 1),
        "pause_ms_max": round(max(pauses), 1),
    }
    print("migration-kills:", json.dumps(report))
    assert not wrong, (
        f"{len(wrong)} keys lost, reordered or duplicated messages, e.g. {next(iter(wrong.items()))}"
    )
    assert table.slot_owners[slot] == (await transport.routing(endpoints[1])).slot_owners[slot]
    assert (await transport.routing(endpoints[0])).epoch == table.epoch == 11
