"""Real controllers and kwok nodes: StatefulSet pods get scheduled, run and become Ready."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from foreshard.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster


def stateful_set(name: str, replicas: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "serviceName": name,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "main", "image": "example.invalid/broker:1"}]},
                },
            },
        }
    )


def pods(cluster: LocalCluster, app: str) -> dict[str, tuple[str, bool]]:
    listed = json.loads(
        cluster.kubectl("get", "pods", "-n", "default", "-l", f"app={app}", "-o", "json").stdout
    )
    result = {}
    for pod in listed["items"]:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
        result[pod["metadata"]["name"]] = (pod.get("status", {}).get("phase", ""), ready)
    return result


def wait_for(predicate: object, timeout_s: float) -> float:
    assert callable(predicate)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"condition not met within {timeout_s}s")


def test_a_stateful_set_scaled_to_three_has_three_running_ready_pods_then_shrinks_from_the_top(
    local_cluster: LocalCluster,
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=stateful_set("web", 1))
    local_cluster.kubectl("scale", "statefulset", "web", "-n", "default", "--replicas=3")
    names = {"web-0", "web-1", "web-2"}

    took = wait_for(
        lambda: (
            set(pods(local_cluster, "web")) == names
            and all(phase == "Running" and ready for phase, ready in pods(local_cluster, "web").values())
        ),
        60,
    )
    assert took < 60

    local_cluster.kubectl("scale", "statefulset", "web", "-n", "default", "--replicas=1")
    wait_for(lambda: set(pods(local_cluster, "web")) == {"web-0"}, 60)
    assert pods(local_cluster, "web")["web-0"] == ("Running", True)
