"""The routing step of a pass: observe the shard pods' brokers -> decide (core) -> push -> report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from foreshard.adapters.brokers import BrokerAdmin, EndpointResolver
from foreshard.adapters.kube import KubePort
from foreshard.api.conditions import Condition
from foreshard.api.shardallocation import QueueSpec
from foreshard.core import routing, workload
from foreshard.core.routing import PushFailure, RoutingDecision
from foreshard_broker.routing import RoutingTable


@dataclass(frozen=True)
class Routed:
    decision: RoutingDecision
    failures: Mapping[int, PushFailure]
    condition: Condition


def route(
    spec: QueueSpec,
    recorded: RoutingTable | None,
    shards: int,
    kube: KubePort,
    endpoints: EndpointResolver,
    brokers: BrokerAdmin,
) -> Routed:
    """One routing step for `shards` shard pods; pushes only a table already recorded in status."""
    pods = [p for p in kube.shard_pods(spec.namespace, spec.name) if not p.terminating]
    found = endpoints.endpoints(workload.shard_name(spec.name), pods)
    epochs = brokers.epochs(found)
    seen = {s: routing.Broker(s, found.get(s), epochs.get(s)) for s in {*found, *(p.ordinal for p in pods)}}
    decision = routing.decide(recorded, spec.slots, shards, seen)
    failures: Mapping[int, PushFailure] = {}
    if decision.push and decision.table is not None:
        failures = brokers.push(decision.table, decision.push)
    return Routed(decision, failures, routing.report(decision, failures))
