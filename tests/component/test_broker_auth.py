"""The Admin API is refused without the admin token on every port a broker opens; the SDK needs none.

Every Admin method of the wire contract is called (read from the service descriptor, so a method
added later is covered too) over a real broker process on loopback.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from prometheus_client import CollectorRegistry

from foreshard_broker.client.broker_client import AdminClient, BrokerClient
from foreshard_broker.client.broker_errors import BrokerCallError
from foreshard_broker.client.consumer import Consumer, ConsumerOptions
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer
from foreshard_broker.testing import BrokerProcess
from foreshard_broker.wire import bearer_metadata, pb

pytestmark = pytest.mark.component

ADMIN = pb.DESCRIPTOR.services_by_name["Admin"]
# Drain last: it stops the broker taking messages, which the calls before it do not mind.
METHODS = sorted(ADMIN.methods, key=lambda method: method.name == "Drain")
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def open_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker started the default way: no --admin-token-file."""
    process = BrokerProcess(tmp_path / "open", admin_token=None).start()
    yield process
    process.kill()


@pytest.fixture
def guarded_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "guarded").start()
    yield process
    process.kill()


@pytest.fixture
async def channel(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    process: BrokerProcess = request.getfixturevalue(request.param)
    async with grpc.aio.insecure_channel(process.endpoint) as opened:
        yield opened, process


async def call_raw(channel: Any, method: Any, metadata: Any) -> tuple[grpc.StatusCode, str]:
    """Call `method` with an empty request of its input type; the status (and message) it ends with."""
    path = f"/{ADMIN.full_name}/{method.name}"
    request = getattr(pb, method.input_type.name)()
    encode, decode = type(request).SerializeToString, getattr(pb, method.output_type.name).FromString
    try:
        if method.client_streaming:
            await channel.stream_unary(path, encode, decode)(iter([request]), metadata=metadata, timeout=10)
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, encode, decode)(request, metadata=metadata, timeout=10):
                pass
        else:
            await channel.unary_unary(path, encode, decode)(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def refusals(channel: Any, metadata: Any) -> dict[str, tuple[grpc.StatusCode, str]]:
    """Every Admin method's outcome (code, message) when called with `metadata`, Drain last."""
    return {method.name: await call_raw(channel, method, metadata) for method in METHODS}


def listening_ports(process: BrokerProcess) -> set[int]:
    assert process.process is not None
    connections = psutil.Process(process.process.pid).net_connections(kind="inet")
    return {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}


def http_status(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("channel", ["open_broker"], indirect=True)
async def test_a_default_broker_refuses_every_admin_call_and_says_how_to_enable_it(channel: Any) -> None:
    opened, process = channel
    assert listening_ports(process) == {process.grpc_port, process.http_port}, "no other port is open"
    for metadata in (None, bearer_metadata("guess")):
        found = await refusals(opened, metadata)
        assert set(found) == {method.name for method in ADMIN.methods}
        assert {code for code, _ in found.values()} == {UNAUTHENTICATED}, found
        assert all(
            "admin API disabled: start the broker with --admin-token-file" in m for _, m in found.values()
        )
    data = BrokerClient(process.endpoint)  # the data API stays open
    assert (await data.get_routing()).epoch == 0
    await data.close()
    assert (await asyncio.to_thread(http_status, process.http_url + "/healthz")) == 200, "still alive"


@pytest.mark.parametrize("channel", ["guarded_broker"], indirect=True)
async def test_admin_calls_without_the_token_or_with_a_wrong_one_are_unauthenticated(channel: Any) -> None:
    opened, process = channel
    assert listening_ports(process) == {process.grpc_port, process.http_port}
    missing = await refusals(opened, None)
    assert {code for code, _ in missing.values()} == {UNAUTHENTICATED}, missing
    assert "carries no 'authorization: Bearer <token>' metadata" in missing["GetRouting"][1]
    for wrong in ("not-" + str(process.admin_token), str(process.admin_token)[:-1], ""):
        found = await refusals(opened, (("authorization", f"Bearer {wrong}"),))
        assert {code for code, _ in found.values()} == {UNAUTHENTICATED}, (wrong, found)
    assert "does not match" in (await refusals(opened, bearer_metadata("x")))["Health"][1]
    admin = process.admin_client()
    assert (await admin.health()).ready, "no refused call changed anything: not drained"
    await admin.close()


@pytest.mark.parametrize("channel", ["guarded_broker"], indirect=True)
async def test_with_the_token_every_admin_call_is_served(channel: Any) -> None:
    opened, process = channel
    found = await refusals(opened, bearer_metadata(process.admin_token))
    assert UNAUTHENTICATED not in {code for code, _ in found.values()}, found
    assert found["GetRouting"][0] is grpc.StatusCode.OK and found["Health"][0] is grpc.StatusCode.OK
    admin = process.admin_client()
    assert await admin.create_group("g") is True
    assert (await admin.get_routing()).epoch == 0
    assert (await admin.health()).draining, "Drain (called last with the token) took effect"
    await admin.close()


@pytest.mark.parametrize("channel", ["open_broker"], indirect=True)
async def test_the_http_port_serves_no_admin_operation(channel: Any) -> None:
    _, process = channel
    for method in ADMIN.methods:
        url = f"{process.http_url}/{ADMIN.full_name}/{method.name}"
        assert await asyncio.to_thread(http_status, url) == 404
        assert await asyncio.to_thread(http_status, url, "POST") == 405


async def test_the_sdk_publishes_and_consumes_with_no_admin_token(guarded_broker: BrokerProcess) -> None:
    transport = GrpcTransport()  # no admin token
    endpoints = [guarded_broker.endpoint]
    try:
        async with Producer(transport, endpoints) as producer:
            await asyncio.gather(*(producer.send(f"k{i % 3}", b"%d" % i) for i in range(30)))
            await producer.send(None, b"keyless")  # least-loaded placement reads GetBacklog
        assert await transport.backlog(guarded_broker.endpoint) == 31
        assert (await transport.routing(guarded_broker.endpoint)).epoch == 0
        consumer = Consumer(transport, endpoints, "billing", "c0", ConsumerOptions(), CollectorRegistry())
        got: list[bytes] = []
        async with consumer:  # the group does not exist: the consumer joins it through the data API
            while len(got) < 31:
                message = await asyncio.wait_for(consumer.receive(), timeout=10)
                got.append(message.payload)
                message.ack()
        assert sorted(got) == sorted([b"%d" % i for i in range(30)] + [b"keyless"])
    finally:
        await transport.close()
    tokenless = AdminClient(guarded_broker.endpoint)
    with pytest.raises(BrokerCallError) as refused:
        await tokenless.health()
    await tokenless.close()
    assert refused.value.code is UNAUTHENTICATED


def test_a_broker_refuses_to_start_with_an_empty_token_file(tmp_path: Path) -> None:
    process = BrokerProcess(tmp_path / "empty", admin_token="  ")
    with pytest.raises(RuntimeError, match="exited with code 2"):
        process.start()
    assert "is empty; write a random token into it" in process.logs()
