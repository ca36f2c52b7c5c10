"""The pod runner on the real control plane: a queue's StatefulSet (no operator) runs real brokers
that keep their endpoint and their data across pod re-creation, restart after a crash, and stop
with the pod, the scale-in and the cluster."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from foreshard.api.names import ANNOTATION_BROKER_ENDPOINT, ANNOTATION_BROKER_METRICS
from foreshard.api.shardallocation import QueueSpec
from foreshard.core.workload import stateful_set
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.process import poll_until
from foreshard_broker.client.broker_client import AdminClient
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.sync import SyncConsumer, SyncProducer
from foreshard_broker.routing import RoutingTable, slot_of

pytestmark = pytest.mark.cluster

NAMESPACE = "runner"
QUEUE = {
    "metadata": {"name": "orders", "namespace": NAMESPACE},
    "spec": {"minShards": 1, "maxShards": 4, "slots": 64, "template": {"storage": {"size": "1Gi"}}},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Its own cluster: the last test stops it and looks for leftover brokers.
    local = LocalCluster(tmp_path_factory.mktemp("runner-cluster"), nodes=1, preferred_ports=False)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 90.0) -> Any:
    return poll_until(predicate, what, timeout_s, interval_s=0.3)


def shard_pods(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout
    return {p["metadata"]["name"]: p for p in json.loads(out)["items"]}


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    deleting = pod["metadata"].get("deletionTimestamp")
    return not deleting and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def all_ready(cluster: LocalCluster, count: int) -> dict[str, dict[str, Any]] | None:
    pods = shard_pods(cluster)
    return pods if len(pods) == count and all(ready(p) for p in pods.values()) else None


def brokers(cluster: LocalCluster) -> dict[str, int]:
    path = cluster.podrunner_dir / "brokers.json"
    return json.loads(path.read_text()) if path.exists() else {}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def scale(cluster: LocalCluster, replicas: int) -> None:
    cluster.kubectl("scale", "statefulset/orders-shard", "-n", NAMESPACE, f"--replicas={replicas}")


async def routing(endpoint: str, token: str) -> Any:
    admin = AdminClient(endpoint, token=token)
    try:
        return await admin.get_routing()
    finally:
        await admin.close()


async def push_routing(endpoints: dict[str, str], token: str) -> None:
    """What the operator does (no operator runs here): two shards, half the slots each."""
    by_shard = {int(name.rsplit("-", 1)[1]): endpoint for name, endpoint in endpoints.items()}
    table = RoutingTable(1, 64, tuple(slot * 2 // 64 for slot in range(64)), {}, by_shard)
    for endpoint in endpoints.values():
        admin = AdminClient(endpoint, token=token)
        try:
            await admin.update_routing(table)
        finally:
            await admin.close()


def annotated(cluster: LocalCluster, count: int) -> dict[str, str] | None:
    found = {
        name: (p["metadata"].get("annotations") or {}).get(ANNOTATION_BROKER_ENDPOINT, "")
        for name, p in shard_pods(cluster).items()
    }
    return found if len(found) == count and all(found.values()) else None


def test_a_queues_stateful_set_runs_real_brokers_that_keep_endpoint_and_data(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE)
    manifest = stateful_set(QueueSpec.from_body(QUEUE), 2)
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    wait_for(lambda: len(shard_pods(cluster)) == 2, "2 shard pods")
    time.sleep(2)
    assert not brokers(cluster), "like a kubelet, the runner waits for the pods' admin token Secret"
    cluster.create_admin_token_secret(NAMESPACE)

    # Shard-pod brokers start with --await-routing: running, but not Ready, until routing arrives.
    endpoints = wait_for(lambda: annotated(cluster, 2), "2 brokers running with their endpoints")
    table = asyncio.run(routing(endpoints["orders-shard-1"], cluster.admin_token))
    assert table.epoch == 0 and set(table.slot_owners) == {1}, "shard 1 knows its ordinal"
    time.sleep(1.5)
    assert not any(ready(p) for p in shard_pods(cluster).values()), "not Ready without a routing table"
    asyncio.run(push_routing(endpoints, cluster.admin_token))

    pods = wait_for(lambda: all_ready(cluster, 2), "2 shard pods Ready")
    time.sleep(2)
    versions = {n: p["metadata"]["resourceVersion"] for n, p in shard_pods(cluster).items()}
    time.sleep(2)
    assert versions == {n: p["metadata"]["resourceVersion"] for n, p in shard_pods(cluster).items()}, (
        "an unchanged pod is not patched again"
    )
    assert all(e.startswith("127.0.0.1:") for e in endpoints.values())
    assert all(p["metadata"]["annotations"][ANNOTATION_BROKER_METRICS] for p in pods.values())

    targets = json.loads((cluster.scrape_targets_dir / "foreshard-brokers.json").read_text())
    assert sorted(t["labels"]["pod"] for t in targets) == ["orders-shard-0", "orders-shard-1"]
    assert all("queue" not in t["labels"] for t in targets)

    sent = [f"m{i}".encode() for i in range(5)]
    key = next(k for k in (f"k{i}" for i in range(100)) if slot_of(k, 64) < 32)  # shard 0's
    with SyncProducer(GrpcTransport, [endpoints["orders-shard-0"]]) as producer:
        for payload in sent:
            producer.publish(key, payload, timeout=10)

    old_uid = pods["orders-shard-0"]["metadata"]["uid"]
    cluster.kubectl("delete", "pod", "orders-shard-0", "-n", NAMESPACE, "--wait=false")
    pods = wait_for(
        lambda: (p := all_ready(cluster, 2)) and p["orders-shard-0"]["metadata"]["uid"] != old_uid and p,
        "orders-shard-0 re-created and Ready",
    )
    assert (
        pods["orders-shard-0"]["metadata"]["annotations"][ANNOTATION_BROKER_ENDPOINT]
        == endpoints["orders-shard-0"]
    ), "a re-created pod's broker keeps its endpoint"
    received = []
    with SyncConsumer(GrpcTransport, [endpoints["orders-shard-0"]], "check") as consumer:
        for _ in sent:
            message = consumer.receive(timeout=10)
            received.append(message.payload)
            message.ack()
    assert received == sent, "the claim's data directory survived the pod"


def test_a_crashed_broker_is_restarted_and_counted(cluster: LocalCluster) -> None:
    pid = brokers(cluster)[f"{NAMESPACE}/orders-shard-1"]
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        pod = shard_pods(cluster)["orders-shard-1"]
        statuses = pod.get("status", {}).get("containerStatuses", [{}])
        return statuses[0].get("restartCount") == 1 and ready(pod)

    wait_for(restarted, "restartCount 1 and Ready again", 60.0)
    assert brokers(cluster)[f"{NAMESPACE}/orders-shard-1"] != pid


def test_scaling_to_zero_and_stopping_the_cluster_leave_no_broker(cluster: LocalCluster) -> None:
    pids = list(brokers(cluster).values())
    assert len(pids) == 2
    scale(cluster, 0)
    wait_for(lambda: not shard_pods(cluster), "no shard pods")
    wait_for(lambda: not brokers(cluster), "no recorded brokers", 30.0)
    assert not [pid for pid in pids if alive(pid)]
    volumes = cluster.podrunner_dir / "volumes" / NAMESPACE
    assert (volumes / "data-orders-shard-0").is_dir(), "a StatefulSet keeps its claims on scale-in"
    cluster.kubectl("delete", "pvc", "data-orders-shard-1", "-n", NAMESPACE, "--wait=false")
    wait_for(lambda: not (volumes / "data-orders-shard-1").exists(), "the released volume's data removed")
    wait_for(
        lambda: "data-orders-shard-1" not in cluster.kubectl("get", "pv", "-o", "name").stdout,
        "the released volume deleted",
    )

    scale(cluster, 1)
    wait_for(lambda: all_ready(cluster, 1), "orders-shard-0 Ready")
    pid = brokers(cluster)[f"{NAMESPACE}/orders-shard-0"]
    cluster.stop()
    assert not alive(pid)
