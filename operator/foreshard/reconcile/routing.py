"""The routing step of a pass: observe the shard pods' brokers -> decide (core) -> push -> report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from foreshard.adapters.brokers import BrokerAdmin, EndpointResolver
from foreshard.adapters.kube import KubePort
from foreshard.api import conditions
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
    hold: str | None = None,
) -> Routed:
    """One routing step for `shards` shard pods; pushes only a table already recorded in status.

    `hold` (a move between Fence and Resume) withholds every push: that move's Switch pushes the
    source first and the target second, and a push here could reach the target first."""
    pods = [p for p in kube.shard_pods(spec.namespace, spec.name) if not p.terminating]
    found = endpoints.endpoints(workload.shard_name(spec.name), pods)
    epochs = brokers.epochs(found)
    seen = {s: routing.Broker(s, found.get(s), epochs.get(s)) for s in {*found, *(p.ordinal for p in pods)}}
    decision = routing.decide(recorded, spec.slots, shards, seen)
    failures: Mapping[int, PushFailure] = {}
    if hold is not None and decision.push and decision.table is not None and not decision.record:
        shards_behind = ", ".join(map(str, decision.push))
        message = f"Shards {shards_behind} do not serve epoch {decision.table.epoch} yet: {hold}."
        return Routed(decision, failures, Condition(conditions.ROUTED, "False", "SwitchInProgress", message))
    if decision.push and decision.table is not None:
        failures = brokers.push(decision.table, decision.push)
    return Routed(decision, failures, routing.report(decision, failures))
