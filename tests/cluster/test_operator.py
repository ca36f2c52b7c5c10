"""The skeleton operator, running as its own ServiceAccount with only the RBAC from manifests/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from foreshard.localcluster.cluster import LocalCluster, service_account_kubeconfig
from foreshard.localcluster.process import free_port

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "queues"


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def get(cluster: LocalCluster, kind: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


@pytest.fixture(scope="module")
def operator(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    local_cluster.kubectl("apply", "-k", str(REPO / "manifests"))
    local_cluster.kubectl("create", "namespace", NAMESPACE)
    workdir = tmp_path_factory.mktemp("operator")
    config = service_account_kubeconfig(
        local_cluster, "foreshard-system", "foreshard-operator", workdir / "kc"
    )
    metrics_port = free_port()
    log = workdir / "operator.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "foreshard.cli",
                "run",
                "--metrics-port",
                str(metrics_port),
                "--liveness-port",
                str(free_port(None, {metrics_port})),
            ],
            env={**os.environ, "KUBECONFIG": str(config), "FORESHARD_RESYNC_SECONDS": "2"},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        yield {"log": log, "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "process": process}
    finally:
        process.terminate()
        process.wait(timeout=20)


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
    assert shown.split("\n")[1].split()[:4] == ["payments", "True", "3", "3"]  # NAME READY SHARDS TARGET

    events = local_cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", "involvedObject.kind=ShardAllocation"
    ).stdout
    assert "Scaled" in events and "Shards 2 -> 3." in events

    with urllib.request.urlopen(operator["metrics"], timeout=5) as response:
        metrics = response.read().decode()
    assert 'foreshard_operator_desired_shards{queue="payments"} 3.0' in metrics

    text = operator["log"].read_text()
    assert "Forbidden" not in text and "403" not in text, text[-3000:]


def test_deleting_the_queue_garbage_collects_its_shards(
    local_cluster: LocalCluster, operator: dict[str, Any]
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=queue("ephemeral", 1))
    wait_for(lambda: get(local_cluster, "statefulset", "ephemeral-shard") is not None, 60, "the StatefulSet")
    local_cluster.kubectl("delete", "shalloc", "ephemeral", "-n", NAMESPACE)
    wait_for(lambda: get(local_cluster, "statefulset", "ephemeral-shard") is None, 60, "garbage collection")
