"""The operator's migration pass (state machine + record-then-act + broker adapter) over real brokers.

Status is an in-memory recorder here (the cluster tests prove the Kubernetes wiring); everything
else is real: three broker processes, the SDK producer and consumer under load, the admin protocol.
The operator is "killed" at each recorded point (right after recording a phase, before acting; and
right after acting, before recording the next): the next pass comes from a fresh process, with no
memory but the recorded item. A per-key checker proves nothing was lost, duplicated or reordered.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest
from migration_load import SLOTS, Load, keys_for
from prometheus_client import CollectorRegistry

from foreshard.adapters.migration import MigrationPerformer, endpoints_of
from foreshard.api.migration import Item, Migration, Phase
from foreshard.core.migration.actions import Action
from foreshard.core.migration.machine import Policy, Result
from foreshard.reconcile.migration import advance
from foreshard_broker.client.consumer import Consumer, ConsumerOptions
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer
from foreshard_broker.client.transport import OutboundMessage, RoutingTable, slot_of
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component

TOKEN = secrets.token_urlsafe(24)
POLICY = Policy(pause_budget_s=0.5, lease_ttl_s=5.0, retry_after_s=0.0)
# (when, phase): "record" kills right after the phase is recorded, "act" right after its action ran.
KILLS = [
    ("act", Phase.PREPARE),
    ("record", Phase.FENCE),
    ("act", Phase.FENCE),
    ("record", Phase.SWITCH),
    ("act", Phase.SWITCH),
    ("record", Phase.DRAIN),
    ("act", Phase.DRAIN),
]
CLEAN_MOVES = 24


class Killed(Exception):
    """The operator process died here."""


class MemoryStatus:
    """status.migrations[] and status.routing, as the StatusWriter would keep them."""

    def __init__(self, table: RoutingTable, kill: tuple[str, Phase] | None = None) -> None:
        self.items: dict[str, dict[str, object]] = {}
        self.table = table
        self.kill = kill

    async def record(self, migration: Migration, table: RoutingTable | None) -> None:
        self.items[migration.id] = migration.to_status()
        if table is not None:
            self.table = table
        if self.kill == ("record", migration.phase):
            self.kill = None
            raise Killed


class KillingBrokers:
    def __init__(self, performer: MigrationPerformer, status: MemoryStatus) -> None:
        self.performer, self.status = performer, status

    async def epochs(self, shards: Iterable[int]) -> dict[int, int | None]:
        return await self.performer.epochs(shards)

    async def perform(self, action: Action) -> Result:
        result = await self.performer.perform(action)
        phase = Phase(str(next(iter(self.status.items.values()))["phase"]))
        if self.status.kill == ("act", phase):
            self.status.kill = None
            raise Killed
        return result


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[BrokerProcess]]:
    started = [BrokerProcess(tmp_path / f"shard-{i}", shard=i, admin_token=TOKEN).start() for i in range(3)]
    yield started
    for process in started:
        process.kill()


@pytest.fixture
async def transport(brokers: list[BrokerProcess]) -> AsyncIterator[GrpcTransport]:
    opened = GrpcTransport(admin_token=TOKEN)
    endpoints = {i: b.endpoint for i, b in enumerate(brokers)}
    table = RoutingTable(1, SLOTS, tuple(s % 3 for s in range(SLOTS)), {}, endpoints)
    for process in brokers:
        await opened.update_routing(process.endpoint, table)
    yield opened
    await opened.close()


async def run(
    transport: GrpcTransport,
    status: MemoryStatus,
    migration: Migration,
    policy: Policy = POLICY,
) -> tuple[Migration, int]:
    """Timer passes until the move is Done or RolledBack; returns it and how many restarts it saw."""
    status.items = {migration.id: migration.to_status()}  # admitted: recorded before anything acts
    results: dict[str, Result] = {}
    restarts = 0
    for _ in range(300):
        recorded = Migration.from_status(status.items[migration.id])
        if recorded.terminal:
            return recorded, restarts
        performer = MigrationPerformer(transport, endpoints_of(dict(status.table.endpoints)))
        try:
            await advance(
                recorded, status.table, status, KillingBrokers(performer, status), policy, time.time, results
            )
        except Killed:
            results, restarts = {}, restarts + 1  # a fresh process remembers nothing
        await asyncio.sleep(0.02)  # the timer's interval
    raise AssertionError(f"move {migration.id} did not finish: {status.items[migration.id]}")


def slot_move(n: int, table: RoutingTable, slot: int) -> Migration:
    source = table.slot_owners[slot]
    return Migration(f"m-{n}", Item(slot=slot), source, (source + 1) % 3, phase_since_s=time.time())


async def test_the_migration_pass_resumes_from_every_recorded_point_and_keeps_every_key_in_order(
    brokers: list[BrokerProcess], transport: GrpcTransport
) -> None:
    endpoints = [b.endpoint for b in brokers]
    status = MemoryStatus(await transport.routing(endpoints[0]))
    slot = slot_of("key-0", SLOTS)
    load = Load(keys_for(slot))
    options = ConsumerOptions(concurrency=8, routing_refresh_s=0.2)
    consumer = Consumer(transport, endpoints, "g", "c", options, CollectorRegistry())
    await consumer.start()
    consuming = asyncio.create_task(consumer.run(load.handle))
    finished: list[tuple[Migration, int]] = []
    async with Producer(transport, endpoints) as producer:
        producing = asyncio.create_task(load.produce(producer))
        for n, kill in enumerate([*KILLS, *[None] * CLEAN_MOVES]):
            await asyncio.sleep(0.05)
            status.kill = kill
            finished.append(await run(transport, status, slot_move(n, status.table, slot)))
        load.stop.set()
        await producing
    deadline = time.monotonic() + 60
    while not load.complete() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await consumer.close()
    await consuming

    wrong, repeats = load.check()
    pauses = sorted(m.pause_ms or 0.0 for m, _ in finished[len(KILLS) :])
    report = {
        "moves": len(finished),
        "operator_kills": sum(restarts for _, restarts in finished),
        "messages": sum(load.sent.values()),
        "pause_ms_p50": round(statistics.median(pauses), 1),
        "pause_ms_p99": round(pauses[min(len(pauses) - 1, int(0.99 * len(pauses)))], 1),
    }
    print("migration-pass:", json.dumps(report))
    assert [m.phase for m, _ in finished] == [Phase.DONE] * len(finished), [m.reason for m, _ in finished]
    assert [restarts for _, restarts in finished[: len(KILLS)]] == [1] * len(KILLS), (
        "every kill point was hit"
    )
    assert not wrong and repeats == 0, f"lost, reordered or duplicated: {list(wrong)[:3]}, {repeats} repeats"
    epochs = await MigrationPerformer(transport, endpoints_of(dict(enumerate(endpoints)))).epochs(range(3))
    assert set(epochs.values()) == {1 + len(finished)}, "every broker serves the last recorded epoch"


async def test_a_fence_over_the_pause_budget_rolls_back_retries_and_the_slot_keeps_serving(
    brokers: list[BrokerProcess], transport: GrpcTransport
) -> None:
    status = MemoryStatus(await transport.routing(brokers[0].endpoint))
    slot = slot_of("key-0", SLOTS)
    source = status.table.slot_owners[slot]
    tight = Policy(pause_budget_s=0.000_001, lease_ttl_s=5.0, retry_after_s=0.0, max_attempts=2)
    moved, _ = await run(transport, status, slot_move(0, status.table, slot), tight)
    assert moved.phase is Phase.ROLLED_BACK and moved.attempt == 2
    assert moved.reason.startswith("PauseBudgetExceeded: the pause would be")
    assert status.table.epoch == 1, "nothing was switched"
    outcome = await transport.publish(brokers[source].endpoint, "p", 1, [OutboundMessage("key-0", b"x")])
    assert outcome[0].status.value == "ok", "the source serves the slot again"
    target = (await transport.admin(brokers[moved.target].endpoint).load_metrics()).retained_messages
    assert target == 0, "the target's partial copy was discarded"


async def test_a_target_that_refuses_the_import_is_rolled_back_and_the_reason_recorded(
    brokers: list[BrokerProcess], transport: GrpcTransport
) -> None:
    status = MemoryStatus(await transport.routing(brokers[0].endpoint))
    slot = slot_of("key-0", SLOTS)
    source, target = status.table.slot_owners[slot], (status.table.slot_owners[slot] + 1) % 3
    third = 3 - source - target
    owners = list(status.table.slot_owners)
    owners[slot] = third  # the target believes a third shard owns the slot: it must refuse the copy
    confused = RoutingTable(2, SLOTS, tuple(owners), {}, dict(status.table.endpoints))
    await transport.update_routing(brokers[target].endpoint, confused)
    await transport.publish(brokers[source].endpoint, "p", 1, [OutboundMessage("key-0", b"x")])
    moved, _ = await run(transport, status, slot_move(0, status.table, slot))
    assert moved.phase is Phase.ROLLED_BACK and moved.attempt == 1
    assert moved.reason.startswith("ImportRefused:") and f"shard {third} owns" in moved.reason
