"""Events the operator posts for a queue: one `Scaled` per change of the replica count, whether the
queue was created while the operator ran or before it started (kopf then runs both the resume and
the create handler for it)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from operator_helpers import NAMESPACE, get, install, running_operator, scaled, wait_for

from foreshard.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster


def queue(name: str, shards: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "foreshard.io/v1alpha1",
            "kind": "ShardAllocation",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"minShards": shards, "maxShards": 8},
        }
    )


def sized(cluster: LocalCluster, name: str, replicas: int) -> bool:
    sts = get(cluster, "statefulset", f"{name}-shard")
    body: dict[str, Any] = get(cluster, "shalloc", name) or {}
    ready = {c["type"]: c["status"] for c in body.get("status", {}).get("conditions", [])}
    return sts is not None and sts["spec"]["replicas"] == replicas and ready.get("Ready") == "True"


def test_a_new_queue_gets_one_scaled_event_created_before_or_after_the_operator_started(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    install(local_cluster)
    local_cluster.kubectl("apply", "-f", "-", stdin=queue("early", 2))
    with running_operator(local_cluster, tmp_path_factory.mktemp("operator-events"), installed=True):
        wait_for(lambda: sized(local_cluster, "early", 2), 90, "the early queue at 2 shards")
        local_cluster.kubectl("apply", "-f", "-", stdin=queue("late", 2))
        wait_for(lambda: sized(local_cluster, "late", 2), 90, "the late queue at 2 shards")
        time.sleep(8)  # four more resync passes: none of them may post again
        events = {name: scaled(local_cluster, name) for name in ("early", "late")}
    for name in ("early", "late"):
        local_cluster.kubectl("delete", "shalloc", name, "-n", NAMESPACE, "--wait=false")
    assert events == {name: [("Shards 0 -> 2. minShards.", 1)] for name in ("early", "late")}, events
