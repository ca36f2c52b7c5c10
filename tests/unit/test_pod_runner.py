"""The pod runner's pure decisions: broker flags, status patches, scrape targets, kwok stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from foreshard.api.names import ANNOTATION_BROKER_ENDPOINT, ANNOTATION_BROKER_METRICS
from foreshard.api.shardallocation import QueueSpec
from foreshard.core.workload import broker_args, stateful_set
from foreshard.localcluster import volumes
from foreshard.localcluster.shardpods import (
    BrokerState,
    ShardPod,
    broker_flags,
    endpoint_annotations,
    kwok_stages,
    ordinal,
    pod_status_patch,
    scrape_targets,
    status_differs,
)
from foreshard_broker.server.main import parse_args

pytestmark = pytest.mark.unit

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def queue(storage: bool) -> QueueSpec:
    template = {"storage": {"size": "1Gi"}} if storage else {}
    body = {
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"minShards": 1, "maxShards": 4, "slots": 256, "template": template},
    }
    return QueueSpec.from_body(body)


def pod_object(storage: bool = True, name: str = "orders-shard-2", **status: Any) -> dict[str, Any]:
    template = stateful_set(queue(storage), 3)["spec"]["template"]
    volumes_ = list(template["spec"]["volumes"])
    if storage:  # the StatefulSet controller adds the claim's volume to each pod
        volumes_.append({"name": "data", "persistentVolumeClaim": {"claimName": f"data-{name}"}})
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": "u-1",
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"]["annotations"],
        },
        "spec": {**template["spec"], "volumes": volumes_, "nodeName": "kwok-node-0"},
        "status": status,
    }


def flags(args: list[str], shard: int = 2) -> list[str]:
    return broker_flags(args, 4001, 4002, "/local/data", shard, "/local/admin-token")


def test_the_pods_broker_args_are_rebound_to_loopback_and_local_paths_only() -> None:
    rebound = flags(broker_args(queue(storage=True)))
    parsed = parse_args(rebound)
    assert (parsed.grpc_listen, parsed.http_listen) == ("127.0.0.1:4001", "127.0.0.1:4002")
    assert (parsed.data_dir, parsed.admin_token_file) == ("/local/data", "/local/admin-token")
    assert (parsed.shard, parsed.queue, parsed.slots) == ("2", "orders", 256)


def test_unknown_flags_and_their_order_pass_through_unchanged() -> None:
    args = ["--future-flag", "x", "--grpc-listen=0.0.0.0:7000", "--queue", "q", "--verbose"]
    assert flags(args) == [
        "--future-flag", "x", "--grpc-listen", "127.0.0.1:4001", "--queue", "q", "--verbose",
        "--http-listen", "127.0.0.1:4002", "--data-dir", "/local/data", "--shard", "2",
    ]  # fmt: skip


def test_an_explicit_shard_is_kept_and_auto_becomes_the_ordinal() -> None:
    assert flags(["--shard", "7"], shard=2)[:2] == ["--shard", "7"]
    assert flags(["--shard", "auto"], shard=5)[:2] == ["--shard", "5"]


@pytest.mark.parametrize(
    ("name", "expected"), [("orders-shard-0", 0), ("orders-shard-12", 12), ("standalone", 0)]
)
def test_the_ordinal_is_the_pod_names_numeric_suffix(name: str, expected: int) -> None:
    assert ordinal(name) == expected


def test_a_pod_view_reads_its_claim_node_and_broker_args() -> None:
    pod = ShardPod.of(pod_object(storage=True))
    assert (pod.key, pod.node, pod.claim, pod.ordinal) == (
        "shop/orders-shard-2",
        "kwok-node-0",
        "data-orders-shard-2",
        2,
    )
    assert pod.args == tuple(broker_args(queue(storage=True))) and not pod.deleting
    assert ShardPod.of(pod_object(storage=False)).claim is None, "an emptyDir has no claim"


def test_endpoint_annotations_name_the_loopback_addresses() -> None:
    assert endpoint_annotations(4001, 4002) == {
        ANNOTATION_BROKER_ENDPOINT: "127.0.0.1:4001",
        ANNOTATION_BROKER_METRICS: "http://127.0.0.1:4002",
    }


def conditions(patch: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in patch["status"]["conditions"]}


def test_a_running_broker_not_yet_ready_makes_a_running_pod_that_is_not_ready() -> None:
    pod = ShardPod.of(pod_object())
    patch = pod_status_patch(
        pod, BrokerState(running=True, ready=False, restart_count=0, started_at=NOW), NOW
    )
    status = patch["status"]
    assert (status["phase"], status["podIP"], status["hostIP"], status["startTime"]) == (
        "Running", "127.0.0.1", "127.0.0.1", NOW,
    )  # fmt: skip
    assert conditions(patch)["Ready"] == "False" and conditions(patch)["ContainersReady"] == "False"
    container = status["containerStatuses"][0]
    assert container["name"] == "broker" and container["state"] == {"running": {"startedAt": NOW}}
    assert (container["ready"], container["started"], container["restartCount"]) == (False, True, 0)


def test_ready_follows_readyz_and_an_unchanged_state_needs_no_patch() -> None:
    state = BrokerState(running=True, ready=True, restart_count=0, started_at=NOW)
    first = pod_status_patch(ShardPod.of(pod_object()), state, NOW)
    assert conditions(first)["Ready"] == "True"
    applied = ShardPod.of(pod_object(**first["status"]))
    again = pod_status_patch(applied, state, LATER)
    assert again == first, "transition times and startTime carry over"
    server_side = {**first["status"], "qosClass": "BestEffort"}  # fields the server adds are fine
    assert not status_differs(server_side, again)
    assert status_differs(first["status"], pod_status_patch(applied, BrokerState(True, False, 0, NOW), LATER))


def test_a_crashed_broker_waits_in_crash_loop_backoff_with_its_restarts_counted() -> None:
    state = BrokerState(
        running=False, ready=False, restart_count=1, waiting_reason="CrashLoopBackOff",
        last_exit_code=137, last_finished_at=NOW,
    )  # fmt: skip
    patch = pod_status_patch(ShardPod.of(pod_object()), state, NOW)
    container = patch["status"]["containerStatuses"][0]
    assert patch["status"]["phase"] == "Running", "restartPolicy Always: the pod stays Running"
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["lastState"]["terminated"]["exitCode"] == 137
    assert (container["restartCount"], container["ready"], container["started"]) == (1, False, False)
    assert conditions(patch)["Ready"] == "False"


def test_a_ready_transition_moves_only_the_changed_conditions_time() -> None:
    pod = ShardPod.of(pod_object())
    first = pod_status_patch(pod, BrokerState(True, False, 0, NOW), NOW)
    later = pod_status_patch(
        ShardPod.of(pod_object(**first["status"])), BrokerState(True, True, 0, NOW), LATER
    )
    times = {c["type"]: c["lastTransitionTime"] for c in later["status"]["conditions"]}
    assert times == {"PodScheduled": NOW, "Initialized": NOW, "ContainersReady": LATER, "Ready": LATER}


def test_scrape_targets_list_each_running_broker_without_a_clashing_queue_label() -> None:
    pods = [(ShardPod.of(pod_object(name=f"orders-shard-{i}")), 9000 + i) for i in (1, 0)]
    targets = scrape_targets(pods)
    assert [t["targets"] for t in targets] == [["127.0.0.1:9000"], ["127.0.0.1:9001"]]
    assert targets[0]["labels"] == {
        "job": "foreshard-broker", "namespace": "shop", "pod": "orders-shard-0", "shard": "0",
        "pod_queue": "orders",
    }  # fmt: skip
    assert all("queue" not in t["labels"] for t in targets), "the broker labels its series with queue"


STAGES = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: node-initialize}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ["True"]}
  next:
    statusTemplate: |
      conditions: []
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: Exists}
  next: {delete: true}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  next:
    statusTemplate: |
      phase: Running
"""


def test_kwok_pod_stages_exclude_the_runners_pods_and_node_stages_stay_unchanged() -> None:
    before = list(yaml.safe_load_all(STAGES))
    after = list(yaml.safe_load_all(kwok_stages(STAGES)))
    assert after[0] == before[0], "node stages are untouched"
    excluded = {
        "key": '.metadata.labels["app.kubernetes.io/managed-by"]',
        "operator": "NotIn",
        "values": ["foreshard-operator"],
    }
    delete, ready = after[1]["spec"], after[2]["spec"]
    assert delete["selector"]["matchExpressions"] == [
        *before[1]["spec"]["selector"]["matchExpressions"],
        excluded,
    ]
    assert ready["selector"] == {"matchExpressions": [excluded]}, "a stage without a selector gets one"
    assert (delete["next"], ready["next"]) == (before[1]["spec"]["next"], before[2]["spec"]["next"])


def test_a_pending_claim_of_the_local_class_gets_a_hostpath_volume_bound_to_it() -> None:
    claim = {
        "metadata": {"name": "data-orders-shard-0", "namespace": "shop", "uid": "abcdef123456"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Pending"},
    }
    assert volumes.wants_volume(claim)
    assert not volumes.wants_volume({**claim, "spec": {**claim["spec"], "storageClassName": "other"}})
    assert not volumes.wants_volume({**claim, "status": {"phase": "Bound"}})
    volume = volumes.persistent_volume(
        claim, volumes.claim_dir(Path("/w"), "shop", claim["metadata"]["name"])
    )
    assert volume["spec"]["hostPath"]["path"] == "/w/volumes/shop/data-orders-shard-0"
    assert volume["spec"]["claimRef"]["uid"] == "abcdef123456"
    assert volume["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == "foreshard.io/local"


def test_the_pod_view_names_the_secrets_a_kubelet_would_wait_for() -> None:
    assert ShardPod.of(pod_object()).secrets == ("foreshard-broker-admin",)
