"""The operator's routing step against real brokers over gRPC: record, push, re-push after a restart.

Shard-pod brokers start with --await-routing: until the operator's table arrives they own nothing
(publishes refused, /readyz not ready), so no producer can put a key on a shard that does not own it.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foreshard.adapters.brokers import AnnotationEndpoints, GrpcBrokers
from foreshard.adapters.kube import ShardPod
from foreshard.api import routing as routing_status
from foreshard.api.names import ANNOTATION_BROKER_ENDPOINT
from foreshard.api.shardallocation import QueueSpec
from foreshard.core.queue_status import Observed
from foreshard.reconcile.routing import route
from foreshard_broker.client.broker_client import BrokerClient
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer
from foreshard_broker.routing import slot_of
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component

TOKEN = "operator-token-for-this-test"
SPEC = QueueSpec.from_body(
    {
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"minShards": 3, "maxShards": 3, "slots": 64},
    }
)


class Pods:
    """The KubePort slice the routing step reads: pods annotated with their broker's endpoint."""

    def __init__(self, brokers: list[BrokerProcess]) -> None:
        self.brokers = brokers

    def shard_pods(self, namespace: str, queue: str) -> list[ShardPod]:
        return [
            ShardPod(
                f"orders-shard-{b.shard}",
                namespace,
                b.shard,
                {ANNOTATION_BROKER_ENDPOINT: b.endpoint},
                True,
                False,
            )
            for b in self.brokers
        ]

    def apply(self, manifest: dict[str, Any]) -> None:
        raise AssertionError("the routing step applies nothing")

    def observe_stateful_set(self, namespace: str, name: str) -> Observed:
        return Observed(3, 3)

    def shard_allocation(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[list[BrokerProcess]]:
    started = [
        BrokerProcess(
            tmp_path / f"shard-{s}",
            shard=s,
            admin_token=TOKEN,
            extra_args=["--slots", "64", "--await-routing"],
        ).start()
        for s in range(3)
    ]
    yield started
    for broker in started:
        broker.kill()


def ready(broker: BrokerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"{broker.http_url}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def passes(brokers: list[BrokerProcess], count: int, token: str = TOKEN) -> Any:
    """`count` routing steps, each starting from the status the previous one recorded."""
    recorded, routed = None, None
    for _ in range(count):
        routed = route(SPEC, recorded, 3, Pods(brokers), AnnotationEndpoints(), GrpcBrokers(token))  # type: ignore[arg-type]
        if routed.decision.table is not None:
            recorded = routing_status.from_status(routing_status.to_status(routed.decision.table), SPEC.slots)
    return routed


async def epochs(brokers: list[BrokerProcess]) -> list[int]:
    transport = GrpcTransport()
    try:
        return [(await transport.routing(b.endpoint)).epoch for b in brokers]
    finally:
        await transport.close()


def test_brokers_own_nothing_until_the_recorded_table_is_pushed(shards: list[BrokerProcess]) -> None:
    assert not any(ready(b) for b in shards)
    first = passes(shards, 1)
    assert first.condition.reason == "RoutingRecorded"
    assert asyncio.run(epochs(shards)) == [0, 0, 0]  # recorded, not yet pushed
    second = passes(shards, 2)
    assert (second.condition.status, second.condition.reason) == ("True", "BrokersRouted")
    assert asyncio.run(epochs(shards)) == [1, 1, 1]
    assert all(ready(b) for b in shards)


def test_keys_land_only_on_their_owner_after_routing(shards: list[BrokerProcess]) -> None:
    table = passes(shards, 2).decision.table
    keys = [f"customer-{i}" for i in range(200)]

    async def publish_and_count() -> list[int]:
        transport = GrpcTransport()
        async with Producer(transport, [shards[2].endpoint]) as producer:  # any broker bootstraps
            await asyncio.gather(*(producer.send(k, b"x") for k in keys))
        await transport.close()
        counts = []
        for broker in shards:
            client = BrokerClient(broker.endpoint)
            counts.append(int((await client.backlog()).retained_messages))
            await client.close()
        return counts

    counts = asyncio.run(publish_and_count())
    expected = [sum(1 for k in keys if table.slot_owners[slot_of(k, 64)] == s) for s in range(3)]
    assert counts == expected and sum(counts) == len(keys)


def test_a_restarted_broker_on_a_new_port_is_recorded_again_and_pushed(shards: list[BrokerProcess]) -> None:
    passes(shards, 2)
    shards[1].kill()
    shards[1].start()  # a fresh port: the pod came back elsewhere
    routed = passes(shards, 2)
    table = routed.decision.table
    assert table is not None and table.epoch == 2 and table.endpoints[1] == shards[1].endpoint
    assert routed.condition.reason == "BrokersRouted"
    assert asyncio.run(epochs(shards)) == [2, 2, 2]


def test_a_wrong_token_is_refused_and_reported(shards: list[BrokerProcess]) -> None:
    routed = passes(shards, 2, token="not-the-token")
    assert routed.condition.reason == "RoutingRefused" and "UNAUTHENTICATED" in routed.condition.message
    assert asyncio.run(epochs(shards)) == [0, 0, 0]


def test_traffic_through_routed_brokers_arrives_once_and_in_order(shards: list[BrokerProcess]) -> None:
    from foreshard.localcluster import traffic

    table = passes(shards, 2).decision.table
    assert table is not None
    verdict = asyncio.run(traffic.check(table.endpoints, messages=3000, key_count=300, timeout_s=60))
    assert verdict.ok, verdict.to_json()
    assert sum(verdict.stored_by_shard.values()) == 3000 and len(verdict.stored_by_shard) == 3
    assert verdict.busiest_shard_share < 0.5


def test_a_broker_that_refuses_the_table_is_named_and_the_others_still_serve_it(tmp_path: Path) -> None:
    # shard 1 was started for a different slot count than the queue's spec: it refuses the table
    brokers = [
        BrokerProcess(
            tmp_path / f"s{s}",
            shard=s,
            admin_token=TOKEN,
            extra_args=["--slots", "32" if s == 1 else "64", "--await-routing"],
        ).start()
        for s in range(3)
    ]
    try:
        routed = passes(brokers, 2)
        assert routed.condition.reason == "RoutingRefused"
        assert "Shard 1 refused" in routed.condition.message and "num_slots" in routed.condition.message
        assert asyncio.run(epochs(brokers)) == [1, 0, 1]  # the others serve the table regardless
        again = passes(brokers, 3)  # the pass retries, and keeps saying why
        assert again.condition.reason == "RoutingRefused" and again.decision.push == (1,)
    finally:
        for broker in brokers:
            broker.kill()
