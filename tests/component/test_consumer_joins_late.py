"""A consumer started while a shard's broker is away (its pod restarting) reads that shard once it is
back: the group join is retried, not attempted once (which left the shard unread for good)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component


async def test_a_consumer_started_while_its_broker_is_down_reads_it_after_it_returns(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "b", sync="group").start()
    port, http = broker.grpc_port, broker.http_port
    transport = GrpcTransport()
    try:
        async with Producer(transport, [broker.endpoint]) as producer:
            await asyncio.gather(*(producer.send(f"k{i % 10}", str(i).encode()) for i in range(200)))
        broker.terminate()
        got: list[bytes] = []

        async def handle(message: Message) -> None:
            got.append(message.payload)

        consumer = Consumer(transport, [broker.endpoint], "late", "c", ConsumerOptions(), CollectorRegistry())
        await consumer.start()  # nothing answers: the join fails and must be retried
        running = asyncio.create_task(consumer.run(handle))
        await asyncio.sleep(1.5)
        assert got == []
        broker.extra_args = ["--grpc-listen", f"127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{http}"]
        await asyncio.to_thread(broker.start)
        for _ in range(200):
            if len(got) == 200:
                break
            await asyncio.sleep(0.05)
        await consumer.close()
        await running
        assert sorted(int(p) for p in got) == list(range(200))
    finally:
        await transport.close()
        broker.kill()
