"""Fence leases, idempotent imports and rollback over real broker processes (issue 11, broker side).

The lease is persisted on the source and lapses by itself; a re-run copy imports nothing once the
target consumed and compacted its copy; a rolled-back move leaves nothing on the target; a pinned
key moves on its own; the SDK mover rolls back when the fence is refused.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from foreshard_broker.client.broker_client import BrokerClient, copy_backlog
from foreshard_broker.client.broker_errors import BrokerCallError
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.mover import MoveError, move_key, move_slot
from foreshard_broker.client.transport import Selection
from foreshard_broker.routing import RoutingTable, slot_of
from foreshard_broker.testing import BrokerProcess

if TYPE_CHECKING:
    from broker_fixtures import Clients

pytestmark = pytest.mark.component
pytest_plugins = ("broker_fixtures",)
SLOT = 42
TOKEN = secrets.token_urlsafe(24)


def table(
    epoch: int, a: BrokerProcess, b: BrokerProcess, moved: bool = False, pins: dict[str, int] | None = None
) -> RoutingTable:
    owners = tuple(1 if slot >= 512 or (moved and slot == SLOT) else 0 for slot in range(1024))
    return RoutingTable(epoch, 1024, owners, pins or {}, {0: a.endpoint, 1: b.endpoint})


def keys_in_slot(slot: int, count: int) -> list[str]:
    found, n = [], 0
    while len(found) < count:
        if slot_of(f"user-{n}") == slot:
            found.append(f"user-{n}")
        n += 1
    return found


@pytest.fixture
async def pair(tmp_path: Path, clients: Clients) -> AsyncIterator[tuple[BrokerProcess, BrokerProcess]]:
    # One admin token for both shards, as the operator gives a queue's shards. The target compacts
    # its log often and in small segments, so a test can see compaction.
    a = BrokerProcess(tmp_path / "shard-0", shard=0, admin_token=TOKEN).start()
    b = BrokerProcess(
        tmp_path / "shard-1",
        shard=1,
        admin_token=TOKEN,
        extra_args=["--segment-bytes", "4096", "--compact-every", "0.2"],
    ).start()
    for process in (a, b):
        await clients.admin(process).update_routing(table(1, a, b))
    yield a, b
    for process in (a, b):
        process.kill()


@pytest.fixture
async def transport() -> AsyncIterator[GrpcTransport]:
    opened = GrpcTransport(admin_token=TOKEN)
    yield opened
    await opened.close()


async def publish(client: BrokerClient, sequence: int, key: str, payloads: range) -> None:
    response = await client.publish("p", sequence, [(key, str(i).encode()) for i in payloads])
    assert response.stored.count == len(payloads) and not response.refusals


async def consume_all(client: BrokerClient, group: str = "g") -> list[tuple[str, str]]:
    delivered = []
    while batch := await client.fetch(group, "c", max_messages=100, wait_ms=200):
        delivered += [(m.key, m.payload.decode()) for m in batch]
        await client.ack(group, [m.offset for m in batch])
    return delivered


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_fence_lease_survives_a_restart_of_the_source_until_it_is_lifted(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients
) -> None:
    a, _ = pair
    key = keys_in_slot(SLOT, 1)[0]
    fenced = await clients.admin(a).fence("move-1/1", slots=[SLOT], ttl_ms=60_000, retry_after_ms=40)
    assert fenced.expires_at_ms > time.time() * 1000 + 50_000 and not fenced.renewed

    a.restart()  # SIGKILL: the lease is on disk, not only in memory
    refused = await clients.data(a).publish("p", 1, [(key, b"x")])
    assert refused.stored.count == 0 and refused.refusals[0].paused.retry_after_ms == 40
    again = await clients.admin(a).fence("move-1/1", slots=[SLOT], ttl_ms=60_000)
    assert again.renewed, "the same lease id renews the lease that survived the restart"

    assert await clients.admin(a).unfence("move-1/1")
    assert not await clients.admin(a).unfence("move-1/1"), "unfence is idempotent"
    assert (await clients.data(a).publish("p", 2, [(key, b"x")])).stored.count == 1


async def test_a_lapsed_lease_rolls_back_by_itself_and_the_slot_is_served_again(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients
) -> None:
    a, _ = pair
    key = keys_in_slot(SLOT, 1)[0]
    data, admin = clients.data(a), clients.admin(a)
    await admin.create_group("g")
    await publish(data, 1, key, range(3))
    await admin.fence("gone/1", slots=[SLOT], ttl_ms=300)
    assert await data.fetch("g", "c", max_messages=10) == [], "a fenced slot delivers nothing"
    assert (await data.publish("p", 2, [(key, b"3")])).stored.count == 0

    async def served() -> bool:
        return (await data.publish("p", 2, [(key, b"3")])).stored.count == 1

    await wait_until(served)
    assert [p for _, p in await consume_all(data)] == ["0", "1", "2", "3"]


async def test_a_lease_that_lapsed_while_the_source_was_down_is_dropped_when_it_starts(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients
) -> None:
    a, _ = pair
    key = keys_in_slot(SLOT, 1)[0]
    await clients.admin(a).fence("gone/2", slots=[SLOT], ttl_ms=200)
    a.kill()
    await asyncio.sleep(0.3)  # the lease lapses while no broker runs to lift it
    a.start()
    assert (await clients.data(a).publish("p", 1, [(key, b"x")])).stored.count == 1
    assert not await clients.admin(a).unfence("gone/2")


async def test_bad_fence_requests_are_refused_with_a_sentence_and_change_nothing(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients
) -> None:
    a, _ = pair
    admin = clients.admin(a)
    cases = [
        (dict(lease_id="", slots=[SLOT]), "lease_id is empty"),
        (dict(lease_id="x", slots=[SLOT], ttl_ms=5), "ttl_ms=5 is out of range"),
        (dict(lease_id="x", slots=[SLOT], settle_ms=70_000), "settle_ms=70000 exceeds"),
        (dict(lease_id="x", slots=[700]), "does not own"),
    ]
    for kwargs, sentence in cases:
        with pytest.raises(BrokerCallError) as refused:
            await admin.fence(**kwargs)  # type: ignore[arg-type]
        assert sentence in refused.value.message
    await admin.fence("first", slots=[SLOT])
    with pytest.raises(BrokerCallError) as taken:
        await admin.fence("second", slots=[SLOT, 3])
    assert "already fenced by lease 'first'" in taken.value.message
    assert not await admin.unfence("second"), "a refused fence holds nothing"


async def test_rerunning_a_move_after_the_target_consumed_compacted_and_restarted_imports_nothing(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients
) -> None:
    a, b = pair
    key = keys_in_slot(SLOT, 1)[0]
    admin_a, admin_b = clients.admin(a), clients.admin(b)
    await admin_a.create_group("g")
    await publish(clients.data(a), 1, key, range(100))
    _, ahead = await copy_backlog(admin_a, admin_b, [SLOT], [], 0)
    fenced = await admin_a.fence("m/1", slots=[SLOT], from_offset=ahead)
    await admin_b.import_fenced(fenced)
    for admin in (admin_a, admin_b):  # the switch; A keeps its copy (no release yet)
        await admin.update_routing(table(2, a, b, moved=True))
    assert [p for _, p in await consume_all(clients.data(b))] == [str(i) for i in range(100)]

    async def compacted() -> bool:
        return "compacted" in b.logs()

    await wait_until(compacted)
    b.restart()  # a new port: new clients
    again, _ = await copy_backlog(admin_a, clients.admin(b), [SLOT], [], 0)
    assert (again.imported, again.skipped) == (0, 100), "consumed messages must not come back"
    assert await clients.data(b).fetch("g", "c", max_messages=10, wait_ms=200) == []
    assert await admin_a.release(slots=[SLOT]) == 100


async def test_a_rolled_back_move_leaves_no_copy_on_the_target_and_a_retry_copies_everything(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients
) -> None:
    a, b = pair
    key = keys_in_slot(SLOT, 1)[0]
    admin_a, admin_b = clients.admin(a), clients.admin(b)
    await admin_a.create_group("g")
    await publish(clients.data(a), 1, key, range(50))
    _, ahead = await copy_backlog(admin_a, admin_b, [SLOT], [], 0)
    await admin_b.import_fenced(await admin_a.fence("m/1", slots=[SLOT], from_offset=ahead))
    assert (await admin_b.load_metrics()).retained_messages == 50

    assert await admin_a.unfence("m/1")
    assert await admin_b.discard(slots=[SLOT]) == 50
    assert (await admin_b.load_metrics()).retained_messages == 0
    b.restart()
    admin_b = clients.admin(b)
    assert (await admin_b.load_metrics()).retained_messages == 0, "the discard is durable"
    await publish(clients.data(a), 2, key, range(50, 60))  # A serves again

    retried, _ = await copy_backlog(admin_a, admin_b, [SLOT], [], 0)
    assert retried.imported == 60, "the discard forgot the import marks: a retry copies it all"


async def test_discard_refuses_a_selection_the_shard_owns(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients
) -> None:
    _, b = pair
    with pytest.raises(BrokerCallError) as refused:
        await clients.admin(b).discard(slots=[700])
    assert "still owns" in refused.value.message


async def test_a_pinned_key_moves_on_its_own_and_its_slot_stays(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients, transport: GrpcTransport
) -> None:
    a, b = pair
    vip, neighbour = keys_in_slot(SLOT, 2)
    await clients.admin(a).create_group("g")
    data_a = clients.data(a)
    await publish(data_a, 1, vip, range(20))
    await publish(data_a, 2, neighbour, range(5))
    new_table, report = await move_key(transport, table(1, a, b), vip, 1)
    assert new_table.pinned == {vip: 1} and report.key == vip and report.epoch == 2
    assert (await data_a.publish("p", 3, [(vip, b"x")])).refusals[0].moved.owner_shard == 1
    assert await consume_all(clients.data(b)) == [(vip, str(i)) for i in range(20)]
    assert await consume_all(data_a) == [(neighbour, str(i)) for i in range(5)]


async def test_the_mover_rolls_back_when_the_fence_is_refused_and_the_source_keeps_serving(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients, transport: GrpcTransport
) -> None:
    a, b = pair
    key = keys_in_slot(SLOT, 1)[0]
    admin_a = clients.admin(a)
    await admin_a.create_group("g")
    await publish(clients.data(a), 1, key, range(10))
    await admin_a.fence("someone-else", slots=[SLOT])  # another mover holds the slot
    with pytest.raises(MoveError) as failed:
        await move_slot(transport, table(1, a, b), SLOT, 1)
    assert failed.value.table is None and "rolled back" in str(failed.value)
    assert (await clients.admin(b).load_metrics()).retained_messages == 0, "the copy-ahead was discarded"
    await admin_a.unfence("someone-else")
    assert [p for _, p in await consume_all(clients.data(a))] == [str(i) for i in range(10)]


async def test_a_switch_after_the_lease_lapsed_copies_the_tail_again_before_the_target_serves(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients, transport: GrpcTransport
) -> None:
    """The orchestrator died after recording Switch; the lease lapsed and A served more; the roll
    forward must not strand what A stored and acked meanwhile."""
    a, b = pair
    key = keys_in_slot(SLOT, 1)[0]
    admin_a, admin_b = clients.admin(a), clients.admin(b)
    data_a = clients.data(a)
    await admin_a.create_group("g")
    await publish(data_a, 1, key, range(10))
    fenced = await admin_a.fence("m/1", slots=[SLOT], ttl_ms=200)
    await admin_b.import_fenced(fenced)

    async def served() -> bool:
        return (await data_a.publish("p", 2, [(key, b"10")])).stored.count == 1

    await wait_until(served)  # the lease lapsed: A took message 10 ...
    first = await data_a.fetch("g", "c", max_messages=1)
    await data_a.ack("g", [first[0].offset])  # ... and its consumer acked message 0
    new_table = table(2, a, b, moved=True)
    assert await transport.switch_source(
        a.endpoint, b.endpoint, new_table, Selection(slots=(SLOT,)), fenced.high_offset
    ), "the source reported the slot as taken away unfenced"
    await transport.update_routing(b.endpoint, new_table)
    assert [p for _, p in await consume_all(clients.data(b))] == [str(i) for i in range(1, 11)]


async def test_a_copy_ahead_can_be_throttled_by_bytes_and_resumed(
    pair: tuple[BrokerProcess, BrokerProcess], clients: Clients
) -> None:
    a, b = pair
    key = keys_in_slot(SLOT, 1)[0]
    admin_a, admin_b = clients.admin(a), clients.admin(b)
    await clients.data(a).publish("p", 1, [(key, b"x" * 100) for _ in range(30)])
    first, through = await copy_backlog(admin_a, admin_b, [SLOT], [], 0, max_bytes=1000)
    assert first.imported == 10
    rest, _ = await copy_backlog(admin_a, admin_b, [SLOT], [], through)
    assert rest.imported == 20
