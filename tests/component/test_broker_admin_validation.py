"""Bad Admin requests get INVALID_ARGUMENT with a sentence and change nothing (real broker process).

After every refused request the test reads the broker's state back: routing epoch and table, the
highest offset, what is retained and exported, and that publishing to every slot still works.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from foreshard_broker.client.broker_client import AdminClient
from foreshard_broker.client.broker_errors import BrokerCallError
from foreshard_broker.routing import RoutingTable, slot_of
from foreshard_broker.testing import BrokerProcess
from foreshard_broker.wire import pb

if TYPE_CHECKING:
    from broker_fixtures import Clients, StartBroker

pytestmark = pytest.mark.component
pytest_plugins = ("broker_fixtures",)

LIMITS = ["--max-message-bytes", "1024", "--max-key-bytes", "32"]
FOREIGN_SLOT, SOURCE_SLOT = 700, 701  # owned by shard 2 and by shard 1 (the import's source)
Call = Callable[[AdminClient], Awaitable[Any]]


def key_in(slot: int) -> str:
    return next(key for key in (f"user-{n}" for n in range(100_000)) if slot_of(key) == slot)


def table(
    epoch: int, endpoints: dict[int, str] | None = None, pinned: dict[str, int] | None = None
) -> RoutingTable:
    owners = tuple({FOREIGN_SLOT: 2, SOURCE_SLOT: 1}.get(slot, 0) for slot in range(1024))
    return RoutingTable(epoch, 1024, owners, pinned or {}, endpoints or ENDPOINTS)


ENDPOINTS = {0: "127.0.0.1:7070", 1: "shard-1.queue.svc:7070", 2: "[::1]:7072"}
MINE = key_in(3)


def stored(key: str, offset: int = 0, payload: bytes = b"x", slot: int | None = None) -> Any:
    return pb.StoredMessage(
        offset=offset, key=key, slot=slot_of(key) if slot is None else slot, payload=payload
    )


def chunk(*messages: Any, slots: tuple[int, ...] = (3, SOURCE_SLOT, FOREIGN_SLOT), source: int = 1) -> Any:
    return pb.BacklogChunk(
        source_shard=source, messages=list(messages), selector=pb.Selector(slots=list(slots))
    )


def import_(*chunks: Any) -> Call:
    return lambda admin: admin.import_backlog(list(chunks))


def with_endpoint(endpoint: str) -> Call:
    return lambda admin: admin.update_routing(table(2, {**ENDPOINTS, 1: endpoint}))


DAY_NS = 86_400 * 10**9
BATCH = pb.ProducerBatch(sequence=1, size=1, payload_bytes=1)


def producers(*states: Any) -> Call:
    return lambda admin: admin.import_group_state(
        pb.ExportGroupStateResponse(source_shard=1, selector=pb.Selector(slots=[3]), producers=list(states))
    )


CASES: dict[str, tuple[Call, str]] = {
    "an epoch jump of more than a million": (
        lambda a: a.update_routing(table(1_000_002)), "jumps more than 1000000 past the current epoch 1"),
    "an epoch near 2^63": (lambda a: a.update_routing(table(2**63 - 5)), "out of range"),
    "the epoch 2^64-1": (lambda a: a.update_routing(table(2**64 - 1)), "out of range"),
    "an endpoint without a port": (with_endpoint("shard-1"), "expected host:port"),
    "an endpoint with port 0": (with_endpoint("shard-1:0"), "not a number from 1 to 65535"),
    "an endpoint with port 99999": (with_endpoint("shard-1:99999"), "not a number from 1 to 65535"),
    "an endpoint with a space": (with_endpoint("bad host:7070"), "neither an IP address nor a DNS name"),
    "an endpoint with an empty label": (with_endpoint("a..b:7070"), "neither an IP address nor a DNS name"),
    "an endpoint with a URL": (with_endpoint("http://evil:7070"), "neither an IP address nor a DNS name"),
    "a bad bracketed IPv6 endpoint": (with_endpoint("[zz::1]:7070"), "not an IPv6 address"),
    "an overlong pinned key": (
        lambda a: a.update_routing(table(2, pinned={"k" * 40: 0})), "pinned key of 40"),
    "a pause that would stall producers for long": (
        lambda a: a.pause(slots=[3], retry_after_ms=3_600_000), "retry_after_ms=3600000 exceeds 60000"),
    "a chunk without a selector": (
        import_(pb.BacklogChunk(source_shard=1, messages=[stored(MINE)])), "has no selector"),
    "a message whose slot is not its key's": (import_(chunk(stored(MINE, slot=4))), "hashes to slot 3"),
    "a slot out of range": (import_(chunk(stored(MINE, slot=5000))), "hashes to slot 3"),
    "a keyless message": (import_(chunk(pb.StoredMessage(offset=0, payload=b"x"))), "has no key"),
    "an overlong key": (import_(chunk(stored("k" * 40))), "key over 32 bytes"),
    "an oversized payload": (import_(chunk(stored(MINE, payload=b"x" * 2000))), "2000 payload bytes"),
    "a message outside the chunk's selector": (
        import_(chunk(stored(MINE), slots=(SOURCE_SLOT,))), "outside the chunk's selector"),
    "a message of a slot a third shard owns": (
        import_(chunk(stored(key_in(FOREIGN_SLOT)))), "which shard 2 owns at epoch 1"),
    "chunks from two shards": (
        import_(chunk(stored(MINE)), chunk(stored(MINE, 1), source=2)), "chunks name [1, 2]"),
    "a good chunk followed by a bad one": (
        import_(chunk(stored(MINE), stored(key_in(SOURCE_SLOT), 1)), chunk(stored(MINE, 2, slot=9))),
        "hashes to slot 3"),
    "group state with an empty group name": (
        lambda a: a.import_group_state(pb.ExportGroupStateResponse(
            source_shard=1, selector=pb.Selector(slots=[3]), groups=[pb.GroupState(group="")])),
        "group name is empty"),
    "a producer sequence near 2^63": (
        producers(pb.ProducerState(producer_id="p", recent=[
            pb.ProducerBatch(sequence=2**63 - 1, size=1)])),
        "expected ascending, 1..2^62-1"),
    "a producer epoch a day ahead": (
        producers(pb.ProducerState(producer_id="p", epoch=time.time_ns() + 2 * DAY_NS, recent=[BATCH])),
        "more than a day ahead"),
    "more recent batches than a shard keeps": (
        producers(pb.ProducerState(producer_id="p", recent=[
            pb.ProducerBatch(sequence=n, size=1) for n in range(1, 18)])),
        "lists 17 recent batches"),
    "refusals outside their batch": (
        producers(pb.ProducerState(producer_id="p", recent=[
            pb.ProducerBatch(sequence=1, size=2, refused=[5])])),
        "refusals that do not fit"),
    "a batch that stored nothing": (
        producers(pb.ProducerState(producer_id="p", recent=[
            pb.ProducerBatch(sequence=1, size=1, refused=[0])])),
        "refusals that do not fit"),
    "an empty producer id": (
        producers(pb.ProducerState(producer_id="", recent=[BATCH])), "producer id must be"),
}  # fmt: skip


async def snapshot(admin: AdminClient) -> tuple[Any, ...]:
    health = await admin.health()
    load = await admin.load_metrics()
    exported = [c async for c in admin.export_backlog(slots=[3, SOURCE_SLOT, FOREIGN_SLOT])]
    producer_state = (await admin.export_group_state(slots=[3])).producers
    return (
        list(producer_state),
        await admin.get_routing(),
        health.high_offset,
        health.ready,
        load.retained_messages,
        sum(len(c.messages) for c in exported),
    )


@pytest.fixture
async def shard(start_broker: StartBroker, clients: Clients) -> BrokerProcess:
    process = start_broker(extra_args=LIMITS)
    assert await clients.admin(process).update_routing(table(1)) == 1
    return process


async def test_each_bad_admin_request_is_invalid_argument_with_a_sentence_and_changes_nothing(
    shard: BrokerProcess, clients: Clients
) -> None:
    admin, data = clients.admin(shard), clients.data(shard)
    await admin.create_group("g")
    before = await snapshot(admin)
    for name, (call, message) in CASES.items():
        with pytest.raises(BrokerCallError) as refused:
            await call(admin)
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT, (name, refused.value)
        assert message in refused.value.message, (name, refused.value.message)
        assert await snapshot(admin) == before, f"{name} changed the broker's state"
    answer = await data.publish("p", 1, [(MINE, b"still served")])
    assert answer.stored.count == 1 and not answer.refusals, "no pause was left behind"


async def test_good_admin_requests_next_to_the_bad_ones_are_served(
    shard: BrokerProcess, clients: Clients
) -> None:
    admin = clients.admin(shard)
    assert await admin.update_routing(table(2, {**ENDPOINTS, 1: "10.0.0.7:7070"})) == 2
    assert await admin.update_routing(table(1_000_002)) == 1_000_002, "a step of exactly a million is fine"
    source = key_in(SOURCE_SLOT)
    result = await admin.import_backlog([chunk(stored(MINE), stored(source, 1)), chunk(stored(MINE, 2))])
    assert (result.imported, result.skipped) == (3, 0)
    again = await admin.import_backlog([chunk(stored(MINE), stored(source, 1))])
    assert (again.imported, again.skipped) == (0, 2), "a retried copy is skipped"
    recent = [pb.ProducerBatch(sequence=n, size=1, payload_bytes=1) for n in (4, 5)]
    await producers(pb.ProducerState(producer_id="p", sequence=5, epoch=7, recent=recent))(admin)
    data = clients.data(shard)
    assert (await data.publish("p", 5, [(MINE, b"x")], epoch=7)).stored.duplicate, "the merged batch"
    assert (await data.publish("p", 6, [(MINE, b"y")], epoch=7)).stored.count == 1, "and the next one"
