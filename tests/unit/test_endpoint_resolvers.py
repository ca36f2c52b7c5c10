"""Where the operator looks for each shard's broker: pod DNS in a cluster, the pod's annotation locally."""

from __future__ import annotations

import pytest

from foreshard.adapters.brokers import AnnotationEndpoints, DnsEndpoints, GrpcBrokers, resolver
from foreshard.adapters.kube import ShardPod
from foreshard.api.names import ANNOTATION_BROKER_ENDPOINT
from foreshard_broker.routing import RoutingTable

pytestmark = pytest.mark.unit

PODS = [
    ShardPod("orders-shard-0", "shop", 0, {ANNOTATION_BROKER_ENDPOINT: "127.0.0.1:4000"}, True, False),
    ShardPod("orders-shard-1", "shop", 1, {}, False, False),  # not scheduled, not annotated
]


def test_dns_names_each_scheduled_pod_through_the_headless_service() -> None:
    assert DnsEndpoints().endpoints("orders-shard", PODS) == {0: "orders-shard-0.orders-shard.shop.svc:7000"}


def test_annotations_give_only_the_pods_the_runner_annotated() -> None:
    assert AnnotationEndpoints().endpoints("orders-shard", PODS) == {0: "127.0.0.1:4000"}


def test_an_unknown_resolver_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"annotation.*dns"):
        resolver("consul")


def test_without_a_token_a_push_is_refused_before_any_call() -> None:
    table = RoutingTable(1, 4, (0, 0, 0, 0), {}, {0: "127.0.0.1:1"})
    failures = GrpcBrokers.from_token_file(None).push(table, [0])
    assert failures[0].refused and "--admin-token-file" in failures[0].message
