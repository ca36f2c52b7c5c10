"""`kubectl foreshard` against the real API server, found by kubectl itself as a plugin on PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from foreshard.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

NAMESPACE = "plugin-test"
PLAN_ID = "3f2a9c1e7b44"


def kubectl_plugin(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl foreshard ...`: kubectl finds the console script kubectl-foreshard on PATH."""
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [
        str(cluster.toolchain.path("kubectl")),
        "foreshard",
        *args,
        "--kubeconfig",
        str(cluster.kubeconfig),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def queue(local_cluster: LocalCluster) -> str:
    local_cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    body = {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": "orders", "namespace": NAMESPACE},
        "spec": {"minShards": 1, "maxShards": 8, "scaling": {"mode": "Approve"}},
    }
    local_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
    # the status an operator in Approve mode writes (no operator runs for this queue)
    status = {
        "status": {
            "shards": {"desired": 2, "ready": 1},
            "routing": {"epoch": 5},
            "plan": {
                "id": PLAN_ID,
                "targetShards": 4,
                "forecastPeak": 3410.5,
                "moves": 2,
                "why": "q0.9 peak",
            },
            "migrations": [{"id": "m-1", "slot": 7, "source": 0, "target": 1, "phase": "Fence"}],
            "conditions": [
                {
                    "type": "Forecasting",
                    "status": "True",
                    "reason": "Forecast",
                    "message": "ets",
                    "lastTransitionTime": "2026-12-02T09:05:00Z",
                },
            ],
        }
    }
    local_cluster.kubectl(
        "patch",
        "shalloc",
        "orders",
        "-n",
        NAMESPACE,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    return "orders"


def test_status_json_reads_the_queue_from_the_api_server(local_cluster: LocalCluster, queue: str) -> None:
    result = kubectl_plugin(local_cluster, "status", queue, "-n", NAMESPACE, "--json")
    assert result.returncode == 0, result.stderr
    (shown,) = json.loads(result.stdout)["queues"]
    assert shown["shards"] == {"desired": 2, "ready": 1} and shown["epoch"] == 5
    assert [m["id"] for m in shown["migrations"]] == ["m-1"] and shown["forecast"]["trusted"] is True


def test_approve_sets_the_annotation_for_the_shown_plan_and_refuses_a_stale_id(
    local_cluster: LocalCluster, queue: str
) -> None:
    stale = kubectl_plugin(local_cluster, "approve", queue, "-n", NAMESPACE, "--plan", "000000000000")
    assert stale.returncode == 1 and f"is now {PLAN_ID}" in stale.stderr
    annotation = "jsonpath={.metadata.annotations.foreshard\\.io/approve-plan}"
    assert local_cluster.kubectl("get", "shalloc", queue, "-n", NAMESPACE, "-o", annotation).stdout == ""

    approved = kubectl_plugin(local_cluster, "approve", queue, "-n", NAMESPACE, "--plan", PLAN_ID)
    assert approved.returncode == 0, approved.stderr
    assert local_cluster.kubectl("get", "shalloc", queue, "-n", NAMESPACE, "-o", annotation).stdout == PLAN_ID
    shown = json.loads(kubectl_plugin(local_cluster, "plan", queue, "-n", NAMESPACE, "--json").stdout)
    assert shown["approved"] is True
