"""A whole reconcile pass over in-memory ports: the StatefulSet, status.routing and the Events."""

from __future__ import annotations

from typing import Any

import pytest

from foreshard.adapters.brokers import AnnotationEndpoints
from foreshard.adapters.kube import ApplyRefused, ShardPod
from foreshard.api import routing as routing_status
from foreshard.api.migration import Item, Migration, Phase
from foreshard.api.names import ANNOTATION_BROKER_ENDPOINT
from foreshard.core import routing
from foreshard.core.queue_status import Observed
from foreshard.core.routing import PushFailure
from foreshard.reconcile.shardallocation import Ports, reconcile
from foreshard_broker.routing import RoutingTable

pytestmark = pytest.mark.unit


class Cluster:
    def __init__(self, pods: int) -> None:
        self.replicas = 0
        self.pods = pods
        self.applied: list[dict[str, Any]] = []

    def apply(self, manifest: dict[str, Any]) -> None:
        self.applied.append(manifest)
        if manifest["kind"] == "StatefulSet":
            self.replicas = int(manifest["spec"]["replicas"])

    def observe_stateful_set(self, namespace: str, name: str) -> Observed:
        return Observed(self.replicas, self.replicas)

    def shard_pods(self, namespace: str, queue: str) -> list[ShardPod]:
        return [
            ShardPod(
                f"{queue}-shard-{i}",
                namespace,
                i,
                {ANNOTATION_BROKER_ENDPOINT: f"10.0.0.{i}:7000"},
                True,
                False,
            )
            for i in range(self.pods)
        ]

    def shard_allocation(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None


class Brokers:
    """Brokers that answer with the epoch they were last given."""

    def __init__(self) -> None:
        self.epoch: dict[int, int] = {}
        self.pushes: list[tuple[int, int]] = []

    def epochs(self, endpoints: dict[int, str]) -> dict[int, int | None]:
        return {s: self.epoch.get(s, 0) for s in endpoints}

    def push(self, table: RoutingTable, shards: list[int]) -> dict[int, PushFailure]:
        for shard in shards:
            self.epoch[shard] = table.epoch
            self.pushes.append((shard, table.epoch))
        return {}


def body(min_shards: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "u1", "generation": 1},
        "spec": {"minShards": min_shards, "maxShards": 8, "slots": 64},
        "status": status or {},
    }


def test_three_passes_scale_record_then_push_and_say_so() -> None:
    cluster, brokers = Cluster(pods=3), Brokers()
    ports = Ports(cluster, AnnotationEndpoints(), brokers)
    status: dict[str, Any] = {}
    reasons, events = [], []
    for now in (100.0, 110.0, 120.0):
        outcome = reconcile(body(3, status), ports, now)
        status = {**status, **outcome.status}  # kopf's status patch is a merge patch
        reasons.append(next(c["reason"] for c in status["conditions"] if c["type"] == "Routed"))
        events += [e.reason for e in outcome.events]
    assert reasons == ["RoutingRecorded", "BrokersRouted", "BrokersRouted"]
    assert events == ["Scaled", "RoutingRecorded", "BrokersRouted"]
    assert brokers.pushes == [(0, 1), (1, 1), (2, 1)]  # each pushed once, after it was recorded
    assert status["routing"]["epoch"] == 1 and len(status["routing"]["slotRanges"]) == 3
    assert "routing" not in outcome.status, "a pass that records nothing leaves status.routing alone"


def test_scale_in_is_held_while_the_shards_to_go_own_slots() -> None:
    table = RoutingTable(4, 64, routing.initial_owners(64, 3), {}, {s: f"10.0.0.{s}:7000" for s in range(3)})
    cluster, brokers = Cluster(pods=3), Brokers()
    brokers.epoch = {0: 4, 1: 4, 2: 4}
    outcome = reconcile(
        body(1, {"routing": routing_status.to_status(table)}),
        Ports(cluster, AnnotationEndpoints(), brokers),
        100.0,
    )
    assert cluster.replicas == 3 and outcome.status["shards"]["desired"] == 3
    held = [e for e in outcome.events if e.reason == "DrainBeforeScaleIn"]
    assert held and "shards 1-2 still own slots" in held[0].message


def test_a_refused_apply_is_degraded_with_one_warning_and_the_shards_stay_as_they_run() -> None:
    class Refusing(Cluster):
        refuse = False

        def apply(self, manifest: dict[str, Any]) -> None:
            if self.refuse and manifest["kind"] == "StatefulSet":
                raise ApplyRefused("StatefulSet orders-shard: spec.template.spec.containers[0].resources")
            super().apply(manifest)

    cluster = Refusing(pods=2)
    ports = Ports(cluster, AnnotationEndpoints(), Brokers())
    status: dict[str, Any] = {}
    degraded, events = [], []
    for now, refuse, wanted in ((100.0, False, 2), (110.0, True, 4), (120.0, True, 4), (130.0, False, 4)):
        cluster.refuse = refuse
        outcome = reconcile(body(wanted, status), ports, now)
        status = {**status, **outcome.status}
        found = next(c for c in status["conditions"] if c["type"] == "Degraded")
        degraded.append((found["status"], found["reason"], status["shards"]["desired"], cluster.replicas))
        events += [(e.reason, e.warning) for e in outcome.events if e.reason == "ApplyRefused"]
    # refused: desired stays what the StatefulSet runs (2), not the 4 the spec asks for
    assert degraded == [
        ("False", "Applied", 2, 2),
        ("True", "ApplyRefused", 2, 2),
        ("True", "ApplyRefused", 2, 2),
        ("False", "Applied", 4, 4),
    ]
    assert events == [("ApplyRefused", True)]  # once, when it starts


def test_a_lagging_broker_is_a_warning_event_once() -> None:
    table = RoutingTable(2, 64, routing.initial_owners(64, 2), {}, {s: f"10.0.0.{s}:7000" for s in range(2)})

    class Away(Brokers):
        def epochs(self, endpoints: dict[int, str]) -> dict[int, int | None]:
            return {0: 2, 1: None}

    ports = Ports(Cluster(pods=2), AnnotationEndpoints(), Away())
    first = reconcile(body(2, {"routing": routing_status.to_status(table)}), ports, 100.0)
    lagging = [e for e in first.events if e.reason == "BrokersLagging"]
    assert lagging and lagging[0].warning
    again = reconcile(body(2, {"routing": routing_status.to_status(table), **first.status}), ports, 110.0)
    assert not [e for e in again.events if e.reason == "BrokersLagging"]


def test_a_held_scale_in_says_so_in_scaling_and_posts_its_event_once() -> None:
    table = RoutingTable(4, 64, routing.initial_owners(64, 3), {}, {s: f"10.0.0.{s}:7000" for s in range(3)})
    cluster, brokers = Cluster(pods=3), Brokers()
    brokers.epoch = {0: 4, 1: 4, 2: 4}
    ports = Ports(cluster, AnnotationEndpoints(), brokers)
    recorded = {"routing": routing_status.to_status(table)}
    first = reconcile(body(1, recorded), ports, 100.0)
    scaling = next(c for c in first.status["conditions"] if c["type"] == "Scaling")
    assert (scaling["status"], scaling["reason"]) == ("False", "DrainBeforeScaleIn")
    again = reconcile(body(1, {**recorded, **first.status}), ports, 110.0)  # kopf merges status
    assert cluster.replicas == 3 and "DrainBeforeScaleIn" not in [e.reason for e in again.events]


def test_a_move_recorded_in_switch_holds_every_routing_push_and_the_pass_leaves_its_records_alone() -> None:
    # The operator died after recording Switch (epoch 5) and before pushing it: a generic push now
    # could reach the target before the source. The move's own Switch pushes, in order.
    before = RoutingTable(4, 64, routing.initial_owners(64, 2), {}, {s: f"10.0.0.{s}:7000" for s in range(2)})
    owners = list(before.slot_owners)
    owners[3] = 1
    switched = RoutingTable(5, 64, tuple(owners), {}, dict(before.endpoints))
    move = Migration("m-1", Item(slot=3), 0, 1, Phase.SWITCH, epoch=5, phase_since_s=90.0, started_at_s=80.0)
    brokers = Brokers()
    brokers.epoch = {0: 4, 1: 4}
    recorded = {"routing": routing_status.to_status(switched), "migrations": [move.to_status()]}
    outcome = reconcile(body(2, recorded), Ports(Cluster(pods=2), AnnotationEndpoints(), brokers), 100.0)
    routed = next(c for c in outcome.status["conditions"] if c["type"] == "Routed")
    assert brokers.pushes == [] and routed["reason"] == "SwitchInProgress", routed
    assert "move m-1 of slot/3 (shard 0 -> 1) is in Switch" in routed["message"]
    assert "migrations" not in outcome.status and "routing" not in outcome.status


def test_scale_in_is_held_while_a_move_still_needs_the_shard_to_go() -> None:
    # Slot 40 already switched to shard 0, but shard 2 (its source) has not released its copy yet.
    table = RoutingTable(6, 64, routing.initial_owners(64, 2), {}, {s: f"10.0.0.{s}:7000" for s in range(3)})
    draining = Migration("m-2", Item(slot=40), 2, 0, Phase.DRAIN, epoch=6, phase_since_s=90.0)
    cluster, brokers = Cluster(pods=3), Brokers()
    brokers.epoch = {0: 6, 1: 6, 2: 6}
    status = {"routing": routing_status.to_status(table), "migrations": [draining.to_status()]}
    reconcile(body(2, status), Ports(cluster, AnnotationEndpoints(), brokers), 100.0)
    assert cluster.replicas == 3, "shard 2 stays until its Drain is done"


def test_an_unreadable_status_routing_is_reported_and_nothing_is_pushed_or_scaled_in() -> None:
    cluster, brokers = Cluster(pods=3), Brokers()
    cluster.replicas = 3
    broken = {
        "routing": {"epoch": 5, "slotRanges": [{"start": 0, "end": 9, "shard": 0}]}
    }  # slots 10+ unowned
    outcome = reconcile(body(1, broken), Ports(cluster, AnnotationEndpoints(), brokers), 100.0)
    routed = next(c for c in outcome.status["conditions"] if c["type"] == "Routed")
    assert (routed["status"], routed["reason"]) == ("False", "RoutingInvalid") and "slot 10" in routed[
        "message"
    ]
    assert cluster.replicas == 3 and brokers.pushes == [] and "routing" not in outcome.status
    assert [e.reason for e in outcome.events] == ["RoutingInvalid"] and outcome.events[0].warning
