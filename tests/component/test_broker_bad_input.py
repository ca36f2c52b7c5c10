"""Bad input gets a clear error with the right code, the broker keeps serving, and nothing is lost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from foreshard_broker.client.broker_client import AdminClient, BrokerClient, publish_request
from foreshard_broker.client.broker_errors import BrokerCallError
from foreshard_broker.routing import RoutingTable
from foreshard_broker.testing import BrokerProcess
from foreshard_broker.wire import pb

if TYPE_CHECKING:
    from broker_fixtures import Clients, StartBroker

pytestmark = pytest.mark.component
pytest_plugins = ("broker_fixtures",)

LIMITS = [
    "--max-message-bytes", "1024", "--max-batch-messages", "100", "--max-key-bytes", "32",
    "--max-keys-per-request", "50", "--max-retained-bytes", "20000", "--max-wait-ms", "5000",
]  # fmt: skip
Call = Callable[[BrokerClient, AdminClient], Awaitable[Any]]
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def table(
    epoch: int, slots: int = 1024, owner: int = 0, endpoints: dict[int, str] | None = None
) -> RoutingTable:
    return RoutingTable(epoch, slots, (owner,) * slots, {}, endpoints or {})


CASES: dict[str, tuple[Call, grpc.StatusCode, str]] = {
    "an oversized message": (
        lambda d, a: d.publish("p", 1, [("k", b"x" * 2000)]), INVALID, "message 0 has 2000 payload bytes"),
    "a batch over the message limit": (
        lambda d, a: d.publish("p", 1, [("k", b"x")] * 101), INVALID, "101 messages; the limit is 100"),
    "an empty batch": (lambda d, a: d.publish("p", 1, []), INVALID, "no messages"),
    "an overlong key": (lambda d, a: d.publish("p", 1, [("k" * 33, b"x")]), INVALID, "key of 33 bytes"),
    "too many keys in one request": (
        lambda d, a: d.publish("p", 1, [(f"k{i}", b"x") for i in range(60)]), INVALID, "60 distinct keys"),
    "keys and payloads of different lengths": (
        lambda d, a: d.publish_request(pb.PublishRequest(sequence=1, keys=["a", "b"], payloads=[b""])),
        INVALID, "2 keys but 1 payloads"),
    "headers for only some messages": (
        lambda d, a: d.publish_request(
            pb.PublishRequest(sequence=1, keys=["a", "b"], payloads=[b"", b""], headers=[pb.Headers()])),
        INVALID, "1 header entries for 2 messages"),
    "an overlong producer id": (
        lambda d, a: d.publish("p" * 300, 1, [("k", b"x")]), INVALID, "producer_id is longer than 256 bytes"),
    "too many headers": (
        lambda d, a: d.publish("p", 1, [("k", b"x", {f"h{i}": "v" for i in range(40)})]),
        INVALID, "message 0 has 40 headers; the limit is 32"),
    "oversized headers": (
        lambda d, a: d.publish("p", 1, [("k", b"x", {"trace": "t" * 5000})]),
        INVALID, "header bytes; the limit is 4096"),
    "an overlong group name": (
        lambda d, a: a.create_group("g" * 200), INVALID, "group name is longer than 128 bytes"),
    "an overlong consumer name": (
        lambda d, a: d.fetch("g", "c" * 200), INVALID, "consumer name is longer than 128 bytes"),
    "a fetch of too many messages": (
        lambda d, a: d.fetch("g", "c", max_messages=20_000), INVALID, "max_messages=20000 exceeds the limit"),
    "a fetch of too many bytes": (
        lambda d, a: d.fetch("g", "c", max_bytes=64 * 1024 * 1024), INVALID, "max_bytes=67108864 exceeds"),
    "an unknown group": (lambda d, a: d.fetch("nobody", "c"), NOT_FOUND, "group 'nobody' does not exist"),
    "an empty group name": (lambda d, a: a.create_group(""), INVALID, "group name is empty"),
    "a too long wait": (lambda d, a: d.fetch("g", "c", wait_ms=999_999), INVALID, "wait_ms=999999 exceeds"),
    "an empty key in a selector": (lambda d, a: a.pause(keys=[""]), INVALID, "empty key"),
    "an empty selector": (lambda d, a: a.pause(), INVALID, "names no slots and no keys"),
    "a slot out of range": (lambda d, a: a.export_group_state(slots=[5000]), INVALID, "out of range"),
    "a zero routing epoch": (lambda d, a: a.update_routing(table(0)), INVALID, "positive integer"),
    "a routing table of the wrong size": (
        lambda d, a: a.update_routing(table(9, slots=16)), INVALID, "num_slots=16; this queue uses 1024"),
    "a negative shard in routing": (
        lambda d, a: a.update_routing(table(9, owner=-3)), INVALID, "must be >= 0"),
    "a routing table missing an endpoint": (
        lambda d, a: a.update_routing(table(9, owner=2, endpoints={0: "x:1"})), INVALID, "no endpoint"),
    "an import from this very shard": (
        lambda d, a: a.import_backlog([pb.BacklogChunk(source_shard=0)]), INVALID, "another shard"),
}  # fmt: skip


@pytest.fixture
def limited(start_broker: StartBroker) -> BrokerProcess:
    return start_broker(extra_args=LIMITS)


async def test_every_bad_request_gets_a_clear_error_and_the_broker_keeps_serving(
    limited: BrokerProcess, clients: Clients
) -> None:
    data, admin = clients.data(limited), clients.admin(limited)
    await admin.create_group("g")
    before = await data.publish("good", 1, [("k", b"kept")])
    for name, (call, code, message) in CASES.items():
        with pytest.raises(BrokerCallError) as failure:
            await call(data, admin)
        assert (failure.value.code, message in failure.value.message) == (code, True), (name, failure.value)
    assert (await admin.get_routing()).epoch == 0, "no bad routing table was applied"
    after = await data.publish("good", 2, [("k", b"also kept")])
    assert after.stored.first_offset == before.stored.first_offset + 1
    delivered = await data.fetch("g", "c", max_messages=10)
    assert [m.payload for m in delivered] == [b"kept"]


async def test_malformed_protobuf_is_rejected_without_harming_the_broker(
    limited: BrokerProcess, clients: Clients
) -> None:
    channel = grpc.aio.insecure_channel(limited.endpoint)
    raw = channel.unary_unary("/foreshard.v1.Broker/PublishBatch")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await raw(b"\xff\xff\xff\xff\x0f garbage")  # an invalid varint tag
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid foreshard.v1.PublishRequest" in (failure.value.details() or "")
    finally:
        await channel.close()
    assert (await clients.data(limited).publish("p", 1, [("k", b"x")])).stored.count == 1


async def test_streamed_bad_batch_fails_alone_and_overload_is_resource_exhausted(
    limited: BrokerProcess, clients: Clients
) -> None:
    stream = clients.data(limited).publish_stream()
    await stream.send(publish_request("p", 1, [("k", b"x" * 5000)]))  # over the message limit
    await stream.send(publish_request("p", 2, [("k", b"y" * 1000)] * 10))  # fine
    await stream.send(publish_request("p", 3, [("k", b"z" * 1000)] * 15))  # past 20 kB retained
    bad, good, overload = [await stream.receive() for _ in range(3)]
    await stream.close()
    assert (bad.failure.code, "5000 payload bytes" in bad.failure.message) == (INVALID.value[0], True)
    assert good.stored.count == 10
    assert overload.failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "unacknowledged bytes" in overload.failure.message
    retry = await clients.data(limited).publish("p", 3, [("k", b"z")])
    assert retry.stored.count == 1 and not retry.stored.duplicate, (
        "a failed batch does not consume its sequence"
    )


async def test_a_stream_past_its_inflight_window_is_throttled_not_refused(
    start_broker: StartBroker, clients: Clients
) -> None:
    process = start_broker(extra_args=["--max-inflight-bytes-per-connection", "300000"])
    stream = clients.data(process).publish_stream()
    batch = [(f"k{n}", b"p" * 1000) for n in range(200)]  # about 200 kB: one batch fills the window
    for sequence in range(1, 21):
        await stream.send(publish_request("window", sequence, batch))
    answers = [await stream.receive() for _ in range(20)]
    await stream.close()
    assert [a.sequence for a in answers] == list(range(1, 21)), "answers in order"
    assert all(a.stored.count == 200 for a in answers), "flow control delays batches, it never drops them"
