"""The skeleton operator, running as its own ServiceAccount with only the RBAC from manifests/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from operator_helpers import (
    NAMESPACE,
    assert_no_rbac_denials,
    get,
    running_operator,
    scaled_events,
    scrape,
    wait_for,
)

from foreshard.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    with running_operator(local_cluster, tmp_path_factory.mktemp("operator")) as running:
        yield running


def queue(name: str, min_shards: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "foreshard.io/v1alpha1",
            "kind": "ShardAllocation",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"minShards": min_shards, "maxShards": 8, "capacity": {"messagesPerSecond": 1000}},
        }
    )


def test_the_operator_creates_owns_and_resizes_the_shard_stateful_set(
    local_cluster: LocalCluster, operator: dict[str, Any]
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=queue("payments", 2))

    def ready_with(replicas: int) -> bool:
        body = get(local_cluster, "shalloc", "payments")
        sts = get(local_cluster, "statefulset", "payments-shard")
        if not body or not sts or sts["spec"]["replicas"] != replicas:
            return False
        status = body.get("status", {})
        ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
        return ready == "True" and status.get("observedGeneration") == body["metadata"]["generation"]

    wait_for(lambda: ready_with(2), 60, "2 ready shards")
    sts = get(local_cluster, "statefulset", "payments-shard")
    assert sts is not None
    owner = sts["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ShardAllocation", "payments", True)
    assert get(local_cluster, "service", "payments-shard") is not None

    local_cluster.kubectl(
        "patch", "shalloc", "payments", "-n", NAMESPACE, "--type=merge", "-p", '{"spec": {"minShards": 3}}'
    )
    wait_for(lambda: ready_with(3), 60, "3 ready shards after raising minShards")

    shown = local_cluster.kubectl("get", "shalloc", "payments", "-n", NAMESPACE).stdout
    assert shown.split("\n")[0].split()[:5] == ["NAME", "READY", "SHARDS", "DESIRED", "TARGET"]
    assert shown.split("\n")[1].split()[:4] == ["payments", "True", "3", "3"]  # NAME READY SHARDS DESIRED

    events = scaled_events(local_cluster)
    assert "Scaled" in events and "Shards 2 -> 3." in events

    metrics = scrape(operator["metrics"])
    assert f'foreshard_operator_desired_shards{{namespace="{NAMESPACE}",queue="payments"}} 3.0' in metrics

    assert_no_rbac_denials(operator["log"])


def test_deleting_the_queue_garbage_collects_its_shards(
    local_cluster: LocalCluster, operator: dict[str, Any]
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=queue("ephemeral", 1))
    wait_for(lambda: get(local_cluster, "statefulset", "ephemeral-shard") is not None, 60, "the StatefulSet")
    local_cluster.kubectl("delete", "shalloc", "ephemeral", "-n", NAMESPACE)
    wait_for(lambda: get(local_cluster, "statefulset", "ephemeral-shard") is None, 60, "garbage collection")


def test_a_spec_the_api_server_refuses_is_reported_in_degraded_and_the_shards_stay(
    local_cluster: LocalCluster, operator: dict[str, Any]
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=queue("refused", 2))

    def condition(kind: str) -> dict[str, Any]:
        body = get(local_cluster, "shalloc", "refused") or {}
        found = {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}
        return found.get(kind, {})

    wait_for(lambda: condition("Degraded").get("reason") == "Applied", 60, "Degraded=False once applied")
    # the schema takes both quantities; the StatefulSet's validation refuses a request above its limit
    resources = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    patch = yaml.safe_dump({"spec": {"minShards": 3, "template": {"resources": resources}}})
    local_cluster.kubectl("patch", "shalloc", "refused", "-n", NAMESPACE, "--type=merge", "-p", patch)
    wait_for(lambda: condition("Degraded").get("reason") == "ApplyRefused", 60, "Degraded=True")
    degraded = condition("Degraded")
    assert degraded["status"] == "True"
    assert "StatefulSet refused-shard" in degraded["message"] and "limit" in degraded["message"], degraded
    sts = get(local_cluster, "statefulset", "refused-shard")
    assert sts is not None and sts["spec"]["replicas"] == 2  # minShards 3 is not half-applied
    body = get(local_cluster, "shalloc", "refused") or {}
    assert body["status"]["shards"]["desired"] == 2
    warnings = local_cluster.kubectl(
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        "reason=ApplyRefused,involvedObject.name=refused",
    ).stdout
    assert "ApplyRefused" in warnings and "Warning" in warnings

    patch = yaml.safe_dump({"spec": {"template": {"resources": {"requests": {"cpu": "1"}}}}})
    local_cluster.kubectl("patch", "shalloc", "refused", "-n", NAMESPACE, "--type=merge", "-p", patch)
    wait_for(lambda: condition("Degraded").get("reason") == "Applied", 60, "Degraded=False after the fix")
    wait_for(
        lambda: (get(local_cluster, "statefulset", "refused-shard") or {})["spec"]["replicas"] == 3,
        60,
        "minShards 3 applied once the spec is fixed",
    )
    local_cluster.kubectl("delete", "shalloc", "refused", "-n", NAMESPACE, "--wait=false")
