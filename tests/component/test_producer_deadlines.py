"""A publish whose answer never comes: the broker stored the batch, the client never hears back.

The migration bench once saw a producer batch stored and delivered while the SDK's futures for it
stayed pending for minutes. Whatever loses the answer (a stream lost between broker and client,
a broker that stops answering), a producer must not wait for it forever: the SDK bounds every data
call, and a publish that ran out of time is resent under the same sequence, which the broker
answers "duplicate" (stored once). A proxy in front of a real broker forwards every call and
swallows the answer to the first publish after the broker has stored it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from foreshard_broker.client.broker_client import BrokerClient
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component
pytest_plugins = ("broker_fixtures",)

SERVICE = "foreshard.v1.Broker"


class SwallowingProxy:
    """Forwards the Broker service byte for byte; the first `swallow` publishes are stored by the
    broker but never answered (the call stays open until the client gives up)."""

    def __init__(self, upstream: str, swallow: int = 1) -> None:
        self.upstream, self.swallow = upstream, swallow
        self.swallowed = 0
        self.publishes = 0
        self.server = grpc.aio.server()
        self.channel = grpc.aio.insecure_channel(upstream)
        self.forever = asyncio.Event()

    def _handler(self, method: str) -> Any:
        call = self.channel.unary_unary(f"/{SERVICE}/{method}")

        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            answer: bytes = await call(request)
            if method == "PublishBatch":
                self.publishes += 1
                if self.swallowed < self.swallow:
                    self.swallowed += 1
                    await self.forever.wait()  # stored upstream; the answer is lost here
            return answer

        return grpc.unary_unary_rpc_method_handler(forward)

    async def start(self) -> str:
        methods = ("PublishBatch", "GetRouting", "GetBacklog", "Fetch", "Ack", "Nack", "CreateGroup")
        handlers = {name: self._handler(name) for name in methods}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        self.forever.set()
        await self.server.stop(None)
        await self.channel.close()


@pytest.fixture
async def proxy(broker: BrokerProcess) -> AsyncIterator[tuple[SwallowingProxy, str]]:
    opened = SwallowingProxy(broker.endpoint)
    endpoint = await opened.start()
    yield opened, endpoint
    await opened.stop()


async def test_a_publish_answer_that_never_comes_is_resent_and_stored_once(
    broker: BrokerProcess, proxy: tuple[SwallowingProxy, str]
) -> None:
    swallowing, endpoint = proxy
    transport = GrpcTransport(call_timeout_s=1.0)
    try:
        async with Producer(transport, [endpoint]) as producer:
            sent = [producer.send(f"k{i % 4}", f"{i}".encode()) for i in range(40)]
            await asyncio.wait_for(asyncio.gather(*sent), 20)  # without a deadline: pending for good
    finally:
        await transport.close()
    assert swallowing.swallowed == 1 and swallowing.publishes >= 2, "one answer lost, then resent"
    client = BrokerClient(broker.endpoint)
    try:
        await client.create_group("audit")
        seen: list[bytes] = []
        while messages := await client.fetch("audit", "c", max_messages=1000, wait_ms=300):
            seen += [m.payload for m in messages]
            await client.ack("audit", [m.offset for m in messages])
    finally:
        await client.close()
    assert sorted(seen, key=int) == [f"{i}".encode() for i in range(40)], "each message stored once"
    for key in range(4):
        mine = [int(p) for p in seen if int(p) % 4 == key]
        assert mine == sorted(mine), "and in order per key"
