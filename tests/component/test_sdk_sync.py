"""The synchronous wrappers over a real broker process: blocking publish, receive and ack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.sync import SyncConsumer, SyncProducer
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "shard-0").start()
    yield process
    process.kill()


def test_a_blocking_producer_and_consumer_keep_each_keys_order(broker: BrokerProcess) -> None:
    with SyncProducer(GrpcTransport, [broker.endpoint]) as producer:
        pending = [producer.send(f"k{i % 3}", f"{i}".encode()) for i in range(60)]
        for future in pending:
            future.result(timeout=10)
        producer.publish(None, b"unordered", timeout=10)
    received: list[tuple[str | None, bytes]] = []
    with SyncConsumer(GrpcTransport, [broker.endpoint], "sync") as consumer:
        for _ in range(61):
            message = consumer.receive(timeout=10)
            received.append((message.key, message.payload))
            message.ack()
        with pytest.raises(TimeoutError):
            consumer.receive(timeout=0.3)
    for key in ("k0", "k1", "k2"):
        expected = [f"{i}".encode() for i in range(60) if f"k{i % 3}" == key]
        assert [p for k, p in received if k == key] == expected
    assert (None, b"unordered") in received
