"""One reconcile pass of a ShardAllocation: gather -> decide (core) -> act (adapters) -> report.

Level-based: nothing is remembered between passes; the timer re-runs the pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreshard.adapters.kube import KubePort
from foreshard.adapters.metrics import DESIRED_SHARDS, READY_SHARDS
from foreshard.api.shardallocation import QueueSpec
from foreshard.core import queue_status, workload


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    scaled_from: int | None  # previous replica count when this pass changed it


def reconcile(body: dict[str, Any], kube: KubePort, now: str) -> Outcome:
    spec = QueueSpec.from_body(body)
    before = kube.observe_stateful_set(spec.namespace, workload.shard_name(spec.name))
    desired = workload.desired_replicas(spec, planned=None)
    kube.apply(queue_status.owned_by(workload.headless_service(spec), body))
    kube.apply(queue_status.owned_by(workload.stateful_set(spec, desired), body))
    after = kube.observe_stateful_set(spec.namespace, workload.shard_name(spec.name))
    generation = int(body["metadata"].get("generation", 0))
    status = queue_status.next_status(body.get("status", {}), generation, desired, after, now)
    DESIRED_SHARDS.labels(spec.name).set(desired)
    READY_SHARDS.labels(spec.name).set(after.ready_replicas)
    return Outcome(status, before.replicas if before.replicas != desired else None)
