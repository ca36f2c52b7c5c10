"""Producer idempotence over a real broker process: nothing is ever answered "duplicate" unless stored.

By design (docs/broker.md, "Producer idempotence"): a producer restarted with a fixed id *resumes*
(a newer epoch: every message is stored once); an older incarnation still running is *fenced* (its
futures raise ProducerFencedError); a pipelined batch refused while the next one was in flight
makes the next one OUT_OF_ORDER_SEQUENCE instead of letting it through, so the resends store both,
in order.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from foreshard_broker.client.broker_client import BrokerClient, publish_request
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer, ProducerFencedError
from foreshard_broker.testing import BrokerProcess

if TYPE_CHECKING:
    from broker_fixtures import Clients, StartBroker

pytestmark = pytest.mark.component
pytest_plugins = ("broker_fixtures",)

FAILED_PRECONDITION, RESOURCE_EXHAUSTED = (
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)

PUBLISHER = textwrap.dedent(
    """
    import asyncio, sys
    from foreshard_broker.client.grpc_transport import GrpcTransport
    from foreshard_broker.client.producer import Producer

    async def main(endpoint: str, run: str) -> None:
        transport = GrpcTransport()
        async with Producer(transport, [endpoint], producer_id="svc") as producer:
            await asyncio.gather(*(producer.send(f"k{i % 5}", f"{run}:{i}".encode()) for i in range(200)))
        await transport.close()
        print("published", run)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def read_all(process: BrokerProcess, group: str) -> list[bytes]:
    client = BrokerClient(process.endpoint)
    try:
        await client.create_group(group)
        seen: list[bytes] = []
        while messages := await client.fetch(group, "c", max_messages=1000, wait_ms=200):
            seen += [m.payload for m in messages]
            await client.ack(group, [m.offset for m in messages])
        return seen
    finally:
        await client.close()


async def test_a_producer_process_restarted_with_a_fixed_id_has_every_message_stored_once(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    process = start_broker(sync="group")
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    for run in ("first", "second", "third"):  # three processes, one producer id
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(script), process.endpoint, run],
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    stored = await read_all(process, "audit")
    expected = [f"{run}:{i}".encode() for run in ("first", "second", "third") for i in range(200)]
    assert sorted(stored) == sorted(expected), "resumed: nothing answered duplicate, nothing twice"
    for key in range(5):  # and each key in publish order, across the restarts
        mine = [p for p in stored if int(p.split(b":")[1]) % 5 == key]
        assert mine == [p for p in expected if int(p.split(b":")[1]) % 5 == key]


async def test_an_older_incarnation_of_a_producer_id_is_fenced_even_after_a_broker_restart(
    start_broker: StartBroker,
) -> None:
    # A fixed port, so the restarted broker is the same endpoint (the lane ids name it).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = start_broker(sync="always", extra_args=["--grpc-listen", f"127.0.0.1:{port}"])
    transport = GrpcTransport()
    endpoints = [process.endpoint]
    try:
        old = Producer(transport, endpoints, producer_id="svc")
        await old.start()
        await old.publish("k", b"old-1")
        async with Producer(transport, endpoints, producer_id="svc") as new:
            await new.publish("k", b"new-1")
            await asyncio.to_thread(process.restart)  # the epoch is in the log: it survives
            await transport.close()
            with pytest.raises(ProducerFencedError, match=r"PRODUCER_FENCED.*newer epoch"):
                await old.publish("k", b"old-2")
            await new.publish("k", b"new-2")
        await old.close()
    finally:
        await transport.close()
    assert await read_all(process, "audit") == [b"old-1", b"new-1", b"new-2"]


async def test_a_pipelined_refusal_does_not_swallow_its_retry(
    start_broker: StartBroker, clients: Clients
) -> None:
    """The review's probe4: seq 2 is refused (overload) while seq 3 is in flight behind it."""
    process = start_broker(extra_args=["--max-retained-bytes", "20000"])
    data = clients.data(process)
    await data.create_group("g")
    stream = data.publish_stream()
    batches = {
        1: [(f"a{i}", b"a" * 1000) for i in range(10)],  # 10 kB of 20 kB
        2: [("k", b"b" * 1000)] * 15,  # would pass 20 kB: RESOURCE_EXHAUSTED, nothing stored
        3: [("k", b"c" * 1000)],  # fits; must not overtake 2, and must not make 2 look stored
    }
    for sequence, messages in batches.items():
        await stream.send(publish_request("p", sequence, messages))
    first, second, third = [await stream.receive() for _ in batches]
    assert first.stored.count == 10
    assert second.failure.code == RESOURCE_EXHAUSTED.value[0]
    assert (third.failure.code, third.failure.reason) == (
        FAILED_PRECONDITION.value[0],
        "OUT_OF_ORDER_SEQUENCE",
    )
    assert "the next one this shard expects is 2" in third.failure.message
    delivered = await data.fetch("g", "c", max_messages=100)  # consumers catch up: room again
    assert len(delivered) == 10
    await data.ack("g", [m.offset for m in delivered])
    for sequence in (2, 3):  # the producer resends both, in order
        await stream.send(publish_request("p", sequence, batches[sequence]))
        answer = await stream.receive()
        assert answer.stored.count == len(batches[sequence]) and not answer.stored.duplicate, answer
    await stream.close()
    of_k = []
    while messages := await data.fetch("g", "c", max_messages=100):  # one of a key at a time
        of_k += [m.payload[:1] for m in messages]
        await data.ack("g", [m.offset for m in messages])
    assert of_k == [b"b"] * 15 + [b"c"], "every message once, in send order"


async def test_duplicate_is_answered_only_for_the_batch_that_was_stored(
    broker: BrokerProcess, clients: Clients
) -> None:
    data = clients.data(broker)
    original = [("k", b"one"), ("k", b"two")]
    stored = await data.publish("p", 1, original, epoch=5)
    again = await data.publish("p", 1, original, epoch=5)  # a resend: the same batch
    assert (again.stored.duplicate, again.stored.first_offset) == (True, stored.stored.first_offset)
    refusals: dict[str, Any] = {
        "a different batch under a stored sequence": (1, [("k", b"other")], 5, "a different batch reuses"),
        "a gap": (3, original, 5, "batches 2..2 were never stored here"),
        "an older epoch": (2, original, 4, "PRODUCER_FENCED"),
    }
    for name, (sequence, messages, epoch, message) in refusals.items():
        with pytest.raises(Exception) as refused:
            await data.publish("p", sequence, messages, epoch=epoch)
        assert getattr(refused.value, "code", None) is FAILED_PRECONDITION and message in str(
            refused.value
        ), name
    restarted = await data.publish("p", 1, [("k", b"three")], epoch=6)  # a new incarnation
    assert restarted.stored.count == 1 and not restarted.stored.duplicate
    assert (await clients.admin(broker).health()).high_offset == 3, "only the three real messages"
