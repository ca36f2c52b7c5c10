"""Live shards end to end: real API server, pod runner, broker processes, Prometheus, the operator.

A ShardAllocation of 3 shards gets 3 pods in which real brokers run; the operator records and
pushes routing; 100k messages over 1000 keys enter through one bootstrap endpoint with the public
SDK; every broker stores a share (its own metrics say so); a consumer group receives each message
once and in per-key order; Prometheus scrapes every broker. Then the faults: a deleted pod, a
SIGKILLed broker, and a broker that stops answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from operator_helpers import NAMESPACE, get, install, running_operator, wait_for

from foreshard.api.names import ANNOTATION_BROKER_METRICS
from foreshard.localcluster import devenv, traffic
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.prometheus import PrometheusServer
from foreshard_broker.routing import RoutingTable

pytestmark = pytest.mark.cluster

QUEUE = "live"


def queue_body() -> dict[str, Any]:
    return {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": QUEUE, "namespace": NAMESPACE},
        "spec": {"minShards": 3, "maxShards": 3, "template": {"storage": {"size": "1Gi"}}},
    }


def condition(body: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next(
        (c for c in ((body or {}).get("status") or {}).get("conditions", []) if c["type"] == kind), {}
    )


def routed(cluster: LocalCluster) -> RoutingTable | None:
    return devenv.routed(cluster, NAMESPACE, QUEUE)


def routed_table(cluster: LocalCluster) -> RoutingTable:
    table = routed(cluster)
    assert table is not None, "the queue is Ready and Routed"
    return table


def pods(cluster: LocalCluster) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"foreshard.io/queue={QUEUE}", "-o", "json")
    return sorted(json.loads(out.stdout)["items"], key=lambda p: p["metadata"]["name"])


def pod(cluster: LocalCluster, ordinal: int) -> dict[str, Any]:
    """The shard pod of that ordinal, by name ({} while it does not exist)."""
    return get(cluster, "pod", f"{QUEUE}-shard-{ordinal}") or {}


def pod_ready(found: dict[str, Any], other_than: str = "") -> bool:
    if not found or found["metadata"].get("deletionTimestamp"):
        return False
    states = {c["type"]: c["status"] for c in (found.get("status") or {}).get("conditions", [])}
    return found["metadata"]["uid"] != other_than and states.get("Ready") == "True"


def restarts(found: dict[str, Any]) -> int:
    statuses = (found.get("status") or {}).get("containerStatuses") or [{}]
    return int(statuses[0].get("restartCount", 0))


def slot_arrivals(metrics_url: str) -> int:
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("foreshard_broker_slot_arrivals_total{")
        )
    )


def prometheus_pods(url: str, expression: str) -> set[str]:
    query = urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
        result = json.loads(response.read())["data"]["result"]
    return {r["metric"].get("pod", "") for r in result}


def broker_pids(cluster: LocalCluster) -> dict[str, int]:
    recorded = json.loads((cluster.podrunner_dir / "brokers.json").read_text())
    return {name.rsplit("/", 1)[-1]: int(pid) for name, pid in recorded.items()}


@pytest.fixture(scope="module")
def live(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cluster = local_cluster
    install(cluster)  # the operator's manifests, the namespace and its admin token Secret
    workdir = tmp_path_factory.mktemp("live")
    with (
        PrometheusServer(
            workdir / "prometheus", scrape_interval_s=2, watch_dirs=[cluster.scrape_targets_dir]
        ) as prometheus,
        running_operator(cluster, workdir / "operator", installed=True) as operator,
    ):
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(queue_body()))
        try:
            wait_for(
                lambda: routed(cluster) is not None,
                180,
                "3 shards Ready and Routed",
                lambda: json.dumps(get(cluster, "shardallocation", QUEUE), indent=1)[-3000:],
            )
            yield {"cluster": cluster, "prometheus": prometheus, "operator": operator}
        finally:
            cluster.kubectl("delete", "shardallocation", QUEUE, "-n", NAMESPACE, "--wait=false", check=False)


def test_traffic_through_one_bootstrap_spreads_over_three_live_brokers_and_arrives_once_in_order(
    live: dict[str, Any],
) -> None:
    cluster = live["cluster"]
    table = routed(cluster)
    assert table is not None and table.epoch >= 1 and len(table.endpoints) == 3
    verdict = asyncio.run(
        traffic.check(dict(table.endpoints), messages=100_000, key_count=1000, group="e2e", timeout_s=240)
    )
    print("live-shards:", json.dumps(verdict.to_json()))
    assert verdict.failed == 0 and verdict.ok, verdict.to_json()
    # every broker's own metrics: a share each, the busiest at most 0.45 of the total
    metrics = {
        p["metadata"]["name"]: p["metadata"]["annotations"][ANNOTATION_BROKER_METRICS] for p in pods(cluster)
    }
    stored = {name: slot_arrivals(url) for name, url in metrics.items()}
    assert sum(stored.values()) >= 100_000 and max(stored.values()) <= 0.45 * sum(stored.values()), stored
    # Prometheus scrapes every broker: a live series per pod for this queue
    expected = {p["metadata"]["name"] for p in pods(cluster)}
    expression = f'sum by (pod) (foreshard_broker_slot_arrivals_total{{queue="{QUEUE}"}}) > 0'
    wait_for(
        lambda: prometheus_pods(live["prometheus"].url, expression) >= expected,
        30,
        "a series per broker in Prometheus",
    )


def test_a_deleted_shard_pod_comes_back_on_its_data_and_nothing_acknowledged_is_lost(
    live: dict[str, Any],
) -> None:
    cluster = live["cluster"]
    table = dict(routed_table(cluster).endpoints)
    published: list[traffic.Published] = []

    def publish() -> None:
        published.append(asyncio.run(traffic.publish([table[0]], 60_000, 500, window=500)))

    publisher = threading.Thread(target=publish)
    publisher.start()
    time.sleep(0.5)
    uid = pod(cluster, 1)["metadata"]["uid"]
    cluster.kubectl("delete", "pod", f"{QUEUE}-shard-1", "-n", NAMESPACE, "--wait=false")
    assert publisher.is_alive(), "the publishing ended before the pod was deleted: publish more"
    publisher.join(timeout=240)
    assert not publisher.is_alive() and published
    wait_for(
        lambda: pod_ready(pod(cluster, 1), other_than=uid) and routed(cluster) is not None,
        120,
        "shard 1 back and routed",
    )
    stored = asyncio.run(traffic.stored_by_shard(table))
    verdict = asyncio.run(traffic.judge([table[0]], published[0], "after-delete", 240))
    print("pod-delete:", json.dumps(verdict.to_json()), "stored after re-creation:", stored)
    # failed publishes were never acknowledged: allowed
    assert verdict.ok, (verdict.to_json(), stored, published[0].stored)


def test_a_killed_broker_is_restarted_and_routed_again_losing_nothing_acknowledged(
    live: dict[str, Any],
) -> None:
    cluster = live["cluster"]
    table = dict(routed_table(cluster).endpoints)
    before = asyncio.run(traffic.publish([table[0]], 5_000, 200))
    name = f"{QUEUE}-shard-2"
    os.kill(broker_pids(cluster)[name], signal.SIGKILL)
    wait_for(
        lambda: restarts(pod(cluster, 2)) >= 1 and pod_ready(pod(cluster, 2)) and routed(cluster) is not None,
        90,
        "the runner restarted shard 2's broker and the queue is routed again",
        lambda: json.dumps(pod(cluster, 2).get("status"))[:1500],
    )
    verdict = asyncio.run(traffic.judge([table[0]], before, "after-kill", 120))
    assert before.failed == 0 and verdict.ok, verdict.to_json()


def test_an_unreachable_broker_is_named_in_routed_and_an_event_then_recovers(live: dict[str, Any]) -> None:
    cluster = live["cluster"]
    pid = broker_pids(cluster)[f"{QUEUE}-shard-0"]
    os.kill(pid, signal.SIGSTOP)  # alive, listening, answering nothing
    try:
        wait_for(
            lambda: (
                condition(get(cluster, "shardallocation", QUEUE), "Routed").get("reason") == "BrokersLagging"
            ),
            60,
            "Routed=False BrokersLagging",
        )
        message = condition(get(cluster, "shardallocation", QUEUE), "Routed")["message"]
        assert "Shards 0 " in message, message
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: routed(cluster) is not None, 60, "Routed again after the broker answers")
    events = cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={QUEUE}", "-o", "json"
    )
    reasons = [e["reason"] for e in json.loads(events.stdout)["items"]]
    assert "BrokersLagging" in reasons and "BrokersRouted" in reasons, reasons
