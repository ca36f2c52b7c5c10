"""One contract for the in-memory twin and the real broker: the same scenarios, both transports.

The SDK's unit tests and the prefetch benchmark run on `client/twin.py`; they mean something only
if the twin answers like real brokers. Every scenario below runs twice: on a `TwinNetwork` of two
shards, and on `GrpcTransport` over two real `BrokerProcess` brokers holding the same routing table
(epoch 1, slot s on shard s % 2). Where they disagreed, the twin was fixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.transport import (
    AdminTransport,
    FetchRequest,
    OutboundMessage,
    PublishOutcome,
    PublishStatus,
    RoutingTable,
    Selection,
    TransportError,
    slot_of,
)
from foreshard_broker.client.twin import TwinNetwork, TwinTransport
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component

SLOTS = 1024


def key_on(shard: int, n: int = 0) -> str:
    """The n-th key `k<i>` whose slot shard `shard` owns in the epoch-1 table (slot % 2)."""
    found = [k for k in (f"k{i}" for i in range(200)) if slot_of(k, SLOTS) % 2 == shard]
    return found[n]


A, B, C = key_on(0), key_on(0, 1), key_on(1)  # A and B on shard 0, C on shard 1


@dataclass
class Backend:
    name: str
    transport: AdminTransport
    endpoints: list[str]
    table: RoutingTable

    async def route(self, table: RoutingTable) -> None:
        for endpoint in self.endpoints:
            await self.transport.update_routing(endpoint, table)
        self.table = table

    def moved(self, key: str, to: int) -> RoutingTable:
        owners = list(self.table.slot_owners)
        owners[slot_of(key, SLOTS)] = to
        return dataclasses.replace(self.table, epoch=self.table.epoch + 1, slot_owners=tuple(owners))


@pytest.fixture(params=["twin", "broker"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "twin":
        network = TwinNetwork(2, num_slots=SLOTS)
        yield Backend("twin", TwinTransport(network), network.endpoints, network.brokers["twin-0"].table)
        return
    processes = [
        BrokerProcess(tmp_path / f"shard-{n}", shard=n, admin_token="contract-token").start() for n in (0, 1)
    ]
    transport = GrpcTransport(admin_token="contract-token")
    endpoints = [process.endpoint for process in processes]
    table = RoutingTable(1, SLOTS, tuple(s % 2 for s in range(SLOTS)), {}, dict(enumerate(endpoints)))
    backend = Backend("broker", transport, endpoints, table)
    try:
        await backend.route(table)
        yield backend
    finally:
        await transport.close()
        for process in processes:
            process.kill()


def messages(*items: tuple[str, str]) -> list[OutboundMessage]:
    return [OutboundMessage(key, payload.encode()) for key, payload in items]


async def fetch(backend: Backend, endpoint: str, wait_s: float = 0.3) -> list[tuple[str | None, str, int]]:
    got = await backend.transport.fetch(endpoint, FetchRequest("g", "c", 100, 1 << 20, wait_s))
    return sorted((d.key, d.payload.decode(), d.attempt) for d in got)


async def take(backend: Backend, endpoint: str) -> list[str]:
    """Everything the group gets from `endpoint`, acking as it goes, in delivery order."""
    out: list[str] = []
    while delivered := await backend.transport.fetch(endpoint, FetchRequest("g", "c", 100, 1 << 20, 0.1)):
        out += [d.payload.decode() for d in delivered]
        await backend.transport.ack(endpoint, "g", "c", [d.receipt for d in delivered])
    return out


def statuses(outcomes: list[PublishOutcome]) -> list[PublishStatus]:
    return [outcome.status for outcome in outcomes]


async def test_a_keys_messages_come_one_at_a_time_in_order_and_a_nack_redelivers_first(
    backend: Backend,
) -> None:
    zero, transport = backend.endpoints[0], backend.transport
    await transport.create_group(zero, "g")
    await transport.publish(zero, "p", 1, messages((A, "a0"), (A, "a1"), (A, "a2"), (B, "b0")))
    first = await transport.fetch(zero, FetchRequest("g", "c", 100, 1 << 20, 0.3))
    assert sorted(d.payload for d in first) == [b"a0", b"b0"], "one delivery in flight per key"
    a0 = next(d for d in first if d.key == A)
    await transport.nack(zero, "g", "c", [a0.receipt])
    assert await fetch(backend, zero) == [(A, "a0", 2)], "the nacked head comes back first, attempt 2"
    await transport.ack(zero, "g", "c", [d.receipt for d in first])
    assert await take(backend, zero) == ["a1", "a2"]


async def test_a_message_of_a_slot_owned_elsewhere_is_refused_moved_and_the_rest_is_stored(
    backend: Backend,
) -> None:
    zero, one = backend.endpoints
    await backend.transport.create_group(zero, "g")
    outcomes = await backend.transport.publish(zero, "p", 1, messages((A, "mine"), (C, "theirs")))
    assert statuses(outcomes) == [PublishStatus.OK, PublishStatus.MOVED]
    moved = outcomes[1]
    assert (moved.owner, moved.owner_endpoint, moved.epoch, moved.slot) == (1, one, 1, slot_of(C, SLOTS))
    assert await take(backend, zero) == ["mine"]


async def test_a_fenced_slot_is_refused_paused_and_not_delivered_until_unfenced(backend: Backend) -> None:
    zero, one = backend.endpoints
    transport, selection = backend.transport, Selection(slots=(slot_of(A, SLOTS),))
    await transport.create_group(zero, "g")
    await transport.publish(zero, "p", 1, messages((A, "before")))
    await transport.fence(zero, one, selection, "lease-1", ttl_s=30, from_offset=0, settle_s=0.05)
    refused = await transport.publish(zero, "p", 2, messages((A, "during"), (B, "other")))
    assert statuses(refused) == [PublishStatus.PAUSED, PublishStatus.OK]
    assert refused[0].retry_after_s > 0 and refused[0].slot == slot_of(A, SLOTS)
    assert [p for k, p, _ in await fetch(backend, zero)] == ["other"], "the fenced slot is not delivered"
    assert await transport.unfence(zero, "lease-1")
    assert statuses(await transport.publish(zero, "p", 3, messages((A, "after")))) == [PublishStatus.OK]
    assert await take(backend, zero) == ["before", "after"]


async def test_a_resent_sequence_is_stored_once_and_repeats_what_the_original_refused(
    backend: Backend,
) -> None:
    zero, transport = backend.endpoints[0], backend.transport
    await transport.create_group(zero, "g")
    batch = messages((A, "x"), (C, "elsewhere"))
    assert statuses(await transport.publish(zero, "p", 1, batch)) == [PublishStatus.OK, PublishStatus.MOVED]
    assert statuses(await transport.publish(zero, "p", 1, batch)) == [PublishStatus.OK, PublishStatus.MOVED]
    refused_whole = await transport.publish(zero, "p", 2, messages((C, "only elsewhere")))
    assert statuses(refused_whole) == [PublishStatus.MOVED]
    stored = await transport.publish(zero, "p", 2, messages((A, "y")))  # nothing stored: seq 2 is free
    assert statuses(stored) == [PublishStatus.OK]
    assert await take(backend, zero) == ["x", "y"], "the resend stored nothing a second time"


async def test_switching_a_slot_away_lifts_its_fence_so_it_is_moved_now_and_served_when_it_returns(
    backend: Backend,
) -> None:
    zero, one = backend.endpoints
    transport, selection = backend.transport, Selection(slots=(slot_of(A, SLOTS),))
    await transport.create_group(zero, "g")
    await transport.fence(zero, one, selection, "lease-2", ttl_s=30, from_offset=0, settle_s=0.05)
    away = backend.moved(A, to=1)
    await transport.switch_source(zero, one, away, selection, from_offset=0)
    await transport.update_routing(one, away)
    backend.table = away
    assert statuses(await transport.publish(zero, "p", 1, messages((A, "a")))) == [PublishStatus.MOVED]
    await backend.route(backend.moved(A, to=0))
    assert statuses(await transport.publish(zero, "p", 2, messages((A, "back")))) == [PublishStatus.OK]
    assert await take(backend, zero) == ["back"]


async def test_copying_a_slots_backlog_twice_imports_each_message_once(backend: Backend) -> None:
    zero, one = backend.endpoints
    transport, selection = backend.transport, Selection(slots=(slot_of(A, SLOTS),))
    await transport.publish(zero, "p", 1, messages((A, "m0"), (A, "m1"), (A, "m2")))
    first = await transport.copy_backlog(zero, one, selection, 0)
    again = await transport.copy_backlog(zero, one, selection, 0)
    assert first == again > 0
    await backend.route(backend.moved(A, to=1))
    await transport.create_group(one, "g")
    assert await take(backend, one) == ["m0", "m1", "m2"]


async def test_release_is_refused_while_the_shard_owns_the_slot_and_drops_the_copy_once_it_does_not(
    backend: Backend,
) -> None:
    zero, transport = backend.endpoints[0], backend.transport
    selection = Selection(slots=(slot_of(A, SLOTS),))
    await transport.create_group(zero, "g")
    await transport.publish(zero, "p", 1, messages((A, "kept"), (A, "second")))
    assert [p for _, p, _ in await fetch(backend, zero)] == ["kept"]  # one in flight
    with pytest.raises(TransportError) as refused:
        await transport.release(zero, selection)
    assert refused.value.refused
    assert await transport.backlog(zero) == 2, "a refused release changed nothing"
    await backend.route(backend.moved(A, to=1))
    await transport.release(zero, selection)
    assert await transport.backlog(zero) == 0
    assert await fetch(backend, zero, wait_s=0) == []
