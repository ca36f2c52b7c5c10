"""Forecast-driven scaling end to end: the operator, as its ServiceAccount, reads the tweet trace's
history from a real Prometheus and sizes the shard StatefulSet ahead of the forecast peak."""

from __future__ import annotations

import json
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

MIN_SHARDS = 1
# The ten tweet keys sum to roughly 0.7 msg/s on average with bursts of several msg/s, so one message
# per second per shard makes the q0.9 peak need more than minShards without touching maxShards.
CAPACITY = 1
REPORT: dict[str, Any] = {}


@pytest.fixture(scope="module")
def operator(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    with running_operator(local_cluster, tmp_path_factory.mktemp("operator-forecast")) as running:
        yield running


def tweets(prometheus_url: str, mode: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "foreshard.io/v1alpha1",
            "kind": "ShardAllocation",
            "metadata": {"name": "tweets", "namespace": NAMESPACE},
            "spec": {
                "minShards": MIN_SHARDS,
                "maxShards": 16,
                "capacity": {"messagesPerSecond": CAPACITY},
                "forecast": {
                    "prometheusURL": prometheus_url,
                    "lookback": "7d",
                    "step": "5m",
                    "longHorizon": "1h",
                    "planningQuantile": 0.9,
                },
                "scaling": {"mode": mode, "leadTime": "2m", "headroom": 0.2, "scaleDownStabilization": "10m"},
            },
        }
    )


def reconciles(metrics_url: str) -> float:
    """Successful reconcile passes of the tweets queue so far, from the operator's /metrics."""
    prefix = f'foreshard_operator_reconciles_total{{namespace="{NAMESPACE}",queue="tweets",result="ok"}} '
    lines = [line for line in scrape(metrics_url).splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def state(cluster: LocalCluster) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    body = get(cluster, "shalloc", "tweets") or {}
    status = body.get("status", {})
    sts = get(cluster, "statefulset", "tweets-shard")
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    return status, conditions, sts["spec"]["replicas"] if sts else None


def test_dry_run_records_the_plan_and_keeps_min_shards(
    local_cluster: LocalCluster, operator: dict[str, Any], prometheus_with_traces: Any
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=tweets(prometheus_with_traces.url, "DryRun"))

    def planned() -> bool:
        status, conditions, _ = state(local_cluster)
        return "plan" in status and conditions.get("Scaling", {}).get("reason") == "DryRun"

    wait_for(planned, 90, "a DryRun plan in status", lambda: json.dumps(state(local_cluster)))
    # three more passes must not touch the StatefulSet either
    seen = reconciles(operator["metrics"])
    wait_for(lambda: reconciles(operator["metrics"]) >= seen + 3, 60, "three more passes")
    status, conditions, replicas = state(local_cluster)
    assert replicas == MIN_SHARDS
    assert status["shards"]["desired"] == MIN_SHARDS
    assert status["plan"]["targetShards"] > MIN_SHARDS, status
    assert status["plan"]["forecastPeak"] > 0
    assert conditions["Forecasting"]["status"] == "True", conditions["Forecasting"]
    assert conditions["Forecasting"]["reason"] == "ForecastReady"
    assert len(status["plan"]["id"]) == 12


def test_auto_scales_the_shards_to_the_forecast_plan(
    local_cluster: LocalCluster, operator: dict[str, Any], prometheus_with_traces: Any
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=tweets(prometheus_with_traces.url, "Auto"))

    def scaled() -> bool:
        status, conditions, replicas = state(local_cluster)
        plan = status.get("plan", {})
        return (
            replicas is not None
            and replicas > MIN_SHARDS
            and replicas == plan.get("targetShards")
            and conditions.get("Ready", {}).get("status") == "True"
        )

    wait_for(
        scaled, 120, "the StatefulSet at the planned shard count", lambda: json.dumps(state(local_cluster))
    )
    status, conditions, replicas = state(local_cluster)
    plan = status["plan"]
    assert plan["forecastPeak"] > 0 and replicas == plan["targetShards"]
    assert 0 < plan["expectedUtilisation"] <= 1.5, plan
    assert (conditions["Forecasting"]["status"], conditions["Forecasting"]["reason"]) == (
        "True",
        "ForecastReady",
    )
    events = scaled_events(local_cluster)
    assert "Scaled" in events and f"Shards {MIN_SHARDS} -> " in events and "msg/s" in events, events
    metrics = scrape(operator["metrics"])
    assert (
        f'foreshard_operator_forecast_peak_messages_per_second{{namespace="{NAMESPACE}",queue="tweets"}}'
        in metrics
    )
    REPORT.update(targetShards=replicas, forecastPeak=plan["forecastPeak"], why=plan["why"])
    print(f"forecast plan for tweets: {json.dumps(REPORT)}")
    assert_no_rbac_denials(operator["log"])
