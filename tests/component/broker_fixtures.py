"""Fixtures for broker component tests: real broker processes on loopback, real gRPC clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from foreshard_broker.client.broker_client import AdminClient, BrokerClient
from foreshard_broker.testing import BrokerProcess

StartBroker = Callable[..., BrokerProcess]


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[StartBroker]:
    """Factory: start_broker(shard=0, sync="none", extra_args=[...]) -> a running BrokerProcess."""
    started: list[BrokerProcess] = []

    def start(shard: int = 0, sync: str = "none", extra_args: list[str] | None = None) -> BrokerProcess:
        process = BrokerProcess(
            tmp_path / f"shard-{shard}", shard=shard, sync=sync, extra_args=extra_args or []
        )
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def broker(start_broker: StartBroker) -> BrokerProcess:
    return start_broker(extra_args=["--ack-deadline", "0.5"])


class Clients:
    def __init__(self) -> None:
        self.opened: list[BrokerClient | AdminClient] = []

    def data(self, process: BrokerProcess) -> BrokerClient:
        client = BrokerClient(process.endpoint)
        self.opened.append(client)
        return client

    def admin(self, process: BrokerProcess) -> AdminClient:
        client = process.admin_client()
        self.opened.append(client)
        return client


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    yield opened
    for client in opened.opened:
        await client.close()
