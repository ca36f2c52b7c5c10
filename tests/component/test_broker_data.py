"""Data path over real broker processes: per-key order, redelivery, keyless, restart, probes."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections import defaultdict
from typing import TYPE_CHECKING

import grpc
import pytest

from foreshard_broker.client.broker_client import BrokerClient, publish_request
from foreshard_broker.client.broker_errors import BrokerCallError
from foreshard_broker.testing import BrokerProcess
from foreshard_broker.wire import DRAINING

if TYPE_CHECKING:
    from broker_fixtures import Clients, StartBroker

pytestmark = pytest.mark.component
pytest_plugins = ("broker_fixtures",)

KEYS = [f"order-{i}" for i in range(40)]


async def produce(client: BrokerClient, producer: int, batches: int, per_batch: int) -> int:
    """Pipelined stream; payload `producer:key:counter` lets consumers check each producer's order."""
    stream = client.publish_stream()
    counters: dict[str, int] = defaultdict(int)
    for sequence in range(1, batches + 1):
        messages = []
        for n in range(per_batch):
            key = KEYS[(sequence * per_batch + n + producer) % len(KEYS)]
            messages.append((key, f"{producer}:{key}:{counters[key]}".encode()))
            counters[key] += 1
        await stream.send(publish_request(f"producer-{producer}", sequence, messages))
    stored = 0
    for _ in range(batches):
        response = await stream.receive()
        assert response.WhichOneof("outcome") == "stored", response
        stored += response.stored.count
    await stream.close()
    return stored


async def consume(client: BrokerClient, name: str, state: dict[str, object], total: int) -> None:
    inflight: set[str] = state["inflight"]  # type: ignore[assignment]
    delivered: list[tuple[int, str, bytes]] = state["delivered"]  # type: ignore[assignment]
    while len(delivered) < total:
        batch = await client.fetch("g", name, max_messages=64, wait_ms=200)
        for message in batch:
            assert message.key not in inflight, f"two deliveries of key {message.key} in flight"
            inflight.add(message.key)
        await asyncio.sleep(0)  # let other consumers run while these are "being processed"
        for message in batch:
            inflight.discard(message.key)
            delivered.append((message.offset, message.key, message.payload))
        if batch:
            await client.ack("g", [m.offset for m in batch])


async def test_per_key_order_holds_under_concurrent_producers_and_consumers(
    start_broker: StartBroker, clients: Clients
) -> None:
    process = start_broker()
    await clients.admin(process).create_group("g")
    producers = [clients.data(process) for _ in range(4)]
    stored = await asyncio.gather(*(produce(c, p, batches=25, per_batch=40) for p, c in enumerate(producers)))
    total = sum(stored)
    assert total == 4 * 25 * 40
    state: dict[str, object] = {"inflight": set(), "delivered": []}
    await asyncio.wait_for(
        asyncio.gather(*(consume(clients.data(process), f"c{i}", state, total) for i in range(3))), 60
    )
    delivered: list[tuple[int, str, bytes]] = state["delivered"]  # type: ignore[assignment]
    assert len(delivered) == total
    assert len({offset for offset, _, _ in delivered}) == total, "a message was delivered twice"
    last_offset: dict[str, int] = {}
    last_counter: dict[tuple[str, str], int] = {}
    for offset, key, payload in delivered:
        assert offset > last_offset.get(key, -1), f"key {key} delivered out of offset order"
        last_offset[key] = offset
        producer, _, counter = payload.decode().split(":")
        assert int(counter) == last_counter.get((producer, key), -1) + 1, "a producer's key order broke"
        last_counter[(producer, key)] = int(counter)


async def test_redelivery_after_ack_deadline_and_nack_keeps_key_order(
    broker: BrokerProcess, clients: Clients
) -> None:
    client = clients.data(broker)
    await clients.admin(broker).create_group("g")
    await client.publish("p", 1, [("k", b"m0"), ("k", b"m1"), ("k", b"m2"), ("", b"free-a"), ("", b"free-b")])
    first = await client.fetch("g", "c1", max_messages=10)
    assert sorted(m.payload for m in first) == [b"free-a", b"free-b", b"m0"], (
        "only the key's head plus keyless"
    )
    await client.ack("g", [m.offset for m in first if not m.key])
    # Not acked: after the 0.5 s deadline the head comes back (same message, attempt 2), never m1.
    again = await client.fetch("g", "c2", max_messages=10, wait_ms=5000)
    assert [(m.payload, m.attempt) for m in again] == [(b"m0", 2)]
    assert (await client.ack("g", [again[0].offset])).acked == 1
    second = await client.fetch("g", "c1", max_messages=10, wait_ms=1000)
    assert [m.payload for m in second] == [b"m1"]
    assert (await client.nack("g", [second[0].offset])).nacked == 1
    retry = await client.fetch("g", "c1", max_messages=10, wait_ms=1000)
    assert [(m.payload, m.attempt) for m in retry] == [(b"m1", 2)]
    await client.ack("g", [retry[0].offset])
    last = await client.fetch("g", "c1", max_messages=10, wait_ms=1000)
    assert [m.payload for m in last] == [b"m2"]


async def test_restart_keeps_stored_messages_acks_and_producer_sequences(
    start_broker: StartBroker, clients: Clients
) -> None:
    process = start_broker(sync="group")
    client = clients.data(process)
    await clients.admin(process).create_group("g")
    await client.publish("p", 7, [("a", b"1", {}), ("a", b"2", {"trace": "t-2"}), ("b", b"3", {})])
    got = await client.fetch("g", "c", max_messages=10)
    acked = [m.offset for m in got if m.payload == b"1"]
    await client.ack("g", acked)
    assert process.terminate() == 0
    process.start()
    client = clients.data(process)
    duplicate = await client.publish("p", 7, [("a", b"1"), ("a", b"2"), ("b", b"3")])
    assert duplicate.stored.duplicate, "the producer sequence must survive a restart"
    remaining = await client.fetch("g", "c", max_messages=10, wait_ms=1000)
    assert sorted((m.payload, dict(m.headers)) for m in remaining) == [(b"2", {"trace": "t-2"}), (b"3", {})]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_probes_and_metrics_report_load_and_drain_turns_readiness_off(
    broker: BrokerProcess, clients: Clients
) -> None:
    client, admin = clients.data(broker), clients.admin(broker)
    await client.publish("p", 1, [("hot", b"x" * 10)] * 5)
    status, body = await asyncio.to_thread(http_get, broker.http_url + "/metrics")
    assert status == 200
    assert 'foreshard_messages_published_total{key="hot",queue="default",slot=' in body
    assert "foreshard_broker_publish_latency_seconds_count 1.0" in body
    load = await admin.load_metrics(top_keys=5)
    assert [(k.key, k.arrived_total, k.backlog) for k in load.keys] == [("hot", 5, 5)]
    assert load.process_rss_bytes > 0
    assert (await asyncio.to_thread(http_get, broker.http_url + "/readyz"))[0] == 200
    assert await admin.drain() == 5
    assert (await asyncio.to_thread(http_get, broker.http_url + "/readyz"))[0] == 503
    assert (await asyncio.to_thread(http_get, broker.http_url + "/healthz"))[0] == 200
    with pytest.raises(BrokerCallError) as refused:
        await client.publish_request(publish_request("p", 2, [("hot", b"y")]), timeout=10)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.message.startswith(DRAINING + ":") and "nothing was stored" in refused.value.message
    # what it did store it still says so: a resend of the stored batch is a duplicate, not a refusal
    resent = await client.publish("p", 1, [("hot", b"x" * 10)] * 5)
    assert resent.stored.duplicate
