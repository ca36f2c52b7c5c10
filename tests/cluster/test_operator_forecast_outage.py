"""Missing data is not zero, end to end: a real Prometheus stopped under a forecast-sized queue for
longer than its scale-down stabilization window, then started again.

While Prometheus is away the operator must hold the shards it runs (a rate of zero read from an
empty answer would scale in once the window passed), say why in the Forecasting and Scaling
conditions, and resume forecasting by itself when Prometheus returns. The queue has its own
Prometheus (the tweet trace backfilled), so stopping it disturbs no other test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import NAMESPACE, assert_no_rbac_denials, get, running_operator, scaled, wait_for

from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.prometheus import PrometheusServer, backfill

pytestmark = pytest.mark.cluster

QUEUE = "tweets-outage"
STABILIZATION_S = 20
OUTAGE_S = 3 * STABILIZATION_S  # well past the window, at a 2 s resync: ~30 passes


@pytest.fixture(scope="module")
def own_prometheus(
    tmp_path_factory: pytest.TempPathFactory, canonical_traces: dict[str, Path]
) -> Iterator[PrometheusServer]:
    from foreshard import traces

    workdir = tmp_path_factory.mktemp("prometheus-outage")
    # the last 8 days only (the queue looks back 7): promtool writes a block per 2 h of span
    keep = 8 * 288
    queue = {QUEUE: [s.tail(keep) for s in traces.read_directory(canonical_traces["tweets"])]}
    # on the trace's 5-minute grid and past the next grid point, as the session's backfill does
    backfill(queue, workdir / "data", end_at_s=(time.time() // 300 + 1) * 300 + 900)
    with PrometheusServer(workdir) as server:
        yield server


@pytest.fixture(scope="module")
def operator(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    # a forecast cycle every 3 s, so that the outage and the recovery show within seconds
    env = {"FORESHARD_FORECAST_SECONDS": "3"}
    with running_operator(local_cluster, tmp_path_factory.mktemp("operator-outage"), env=env) as running:
        yield running


def manifest(prometheus_url: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "foreshard.io/v1alpha1",
            "kind": "ShardAllocation",
            "metadata": {"name": QUEUE, "namespace": NAMESPACE},
            "spec": {
                "minShards": 1,
                "maxShards": 16,
                "capacity": {"messagesPerSecond": 1},
                "forecast": {
                    "prometheusURL": prometheus_url,
                    "lookback": "7d",
                    "step": "5m",
                    "longHorizon": "1h",
                    "planningQuantile": 0.9,
                },
                "scaling": {
                    "mode": "Auto",
                    "leadTime": "2m",
                    "headroom": 0.2,
                    "scaleDownStabilization": f"{STABILIZATION_S}s",
                },
            },
        }
    )


def observe(cluster: LocalCluster) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int | None]:
    body = get(cluster, "shalloc", QUEUE) or {}
    status = body.get("status", {})
    sts = get(cluster, "statefulset", f"{QUEUE}-shard")
    return (
        status,
        {c["type"]: c for c in status.get("conditions", [])},
        sts["spec"]["replicas"] if sts else None,
    )


def reason(cluster: LocalCluster, kind: str) -> str | None:
    return observe(cluster)[1].get(kind, {}).get("reason")


@pytest.mark.timeout(900)
def test_a_prometheus_outage_holds_the_shards_says_why_and_forecasting_resumes(
    local_cluster: LocalCluster, operator: dict[str, Any], own_prometheus: PrometheusServer
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=manifest(own_prometheus.url))
    evidence = lambda: json.dumps(observe(local_cluster))  # noqa: E731

    def sized() -> bool:
        status, conditions, replicas = observe(local_cluster)
        forecasting = conditions.get("Forecasting", {})
        return (
            replicas is not None
            and replicas > 1
            and replicas == status.get("plan", {}).get("targetShards")
            and forecasting.get("reason") == "ForecastReady"
        )

    wait_for(sized, 180, "the queue sized on its forecast", evidence)
    _, _, planned = observe(local_cluster)
    print("scaled events at creation:", json.dumps(scaled(local_cluster, QUEUE)))
    port = own_prometheus.port

    own_prometheus.stop()
    try:
        wait_for(
            lambda: reason(local_cluster, "Forecasting") == "PrometheusUnreachable",
            60,
            "the outage seen",
            evidence,
        )
        status, conditions, replicas = observe(local_cluster)
        assert conditions["Forecasting"]["status"] == "False"
        assert "holding" in conditions["Forecasting"]["message"], conditions["Forecasting"]
        assert conditions["Scaling"]["reason"] == "MissingData", conditions["Scaling"]
        assert "Missing data is not zero" in conditions["Scaling"]["message"]
        # longer than the stabilization window: a zero read as demand would have scaled in by now
        seen = set()
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            status, conditions, replicas = observe(local_cluster)
            seen.add((replicas, status.get("shards", {}).get("desired")))
            assert conditions["Forecasting"]["reason"] == "PrometheusUnreachable", conditions
            time.sleep(1.0)
        assert seen == {(planned, planned)}, seen
    finally:
        own_prometheus.port = port
        own_prometheus.start()
    assert own_prometheus.port == port  # the queue's prometheusURL still points at it

    wait_for(
        lambda: reason(local_cluster, "Forecasting") == "ForecastReady", 120, "forecasting resumed", evidence
    )
    status, conditions, replicas = observe(local_cluster)
    assert conditions["Forecasting"]["status"] == "True"
    assert conditions.get("Scaling", {}).get("reason") != "MissingData", conditions
    assert replicas is not None and replicas >= 1 and status["plan"]["forecastPeak"] > 0
    assert_no_rbac_denials(operator["log"])
    local_cluster.kubectl("delete", "shalloc", QUEUE, "-n", NAMESPACE, "--wait=false")
