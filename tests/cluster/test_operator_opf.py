"""OrderParamForecasts and consumer scaling end to end: the operator, as its ServiceAccount, reads the
tweet trace and a consumer group's acknowledgements from a real Prometheus holding their history,
keeps one OPF per heavy key and the tail, reconciles a person's OPF for a quiet key, sizes the
group's Deployment ahead of its forecast backlog, and exports the predictions, which that
Prometheus scrapes. Deleting the queue deletes the operator's OPFs (garbage collection through
their ownerReferences) and leaves the person's."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from operator_helpers import assert_no_rbac_denials, running_operator, wait_for

from foreshard import traces
from foreshard.core.series import Series
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.prometheus import PrometheusServer, backfill

pytestmark = pytest.mark.cluster

NAMESPACE = "forecasts"
TRACKED = 3  # the operator tracks the three heaviest of the ten tweet keys
STEP = 300.0


def summed(series: list[Series]) -> Series:
    """All keys on one grid (the acks of a group that consumes the whole queue)."""
    start, end = min(s.start_s for s in series), max(s.end_s for s in series)
    total = np.zeros(round((end - start) / STEP))
    for one in series:
        offset = round((one.start_s - start) / STEP)
        total[offset : offset + len(one)] += np.nan_to_num(one.values)
    return Series("billing", start, STEP, total)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, canonical_traces: dict[str, Path]) -> Iterator[Any]:
    """Tweets, and a group `billing` that acknowledged 60 % of them: its backlog keeps growing."""
    work = tmp_path_factory.mktemp("prometheus-opf")
    tweets = traces.read_directory(canonical_traces["tweets"])
    total = summed(tweets)
    acks = Series("billing", total.start_s, STEP, np.floor(total.values * 0.6))
    now = time.time() // STEP * STEP
    backfill({"tweets": tweets}, work / "data", end_at_s=now, acks={"tweets": [acks]})
    with PrometheusServer(work, scrape_interval_s=2) as server:
        yield server, tweets


@pytest.fixture(scope="module")
def operator(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    env = {"FORESHARD_FORECAST_SECONDS": "3", "FORESHARD_TRACKED_KEYS": str(TRACKED)}
    with running_operator(local_cluster, tmp_path_factory.mktemp("operator-opf"), env) as running:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        local_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(namespace))
        yield running


def kubectl_json(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl(*args, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def forecasts_of(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    found = kubectl_json(cluster, "get", "orderparamforecasts") or {"items": []}
    return {o["metadata"]["name"]: o for o in found["items"]}


def queue(url: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "foreshard.io/v1alpha1",
            "kind": "ShardAllocation",
            "metadata": {"name": "tweets", "namespace": NAMESPACE},
            "spec": {
                "minShards": 1,
                "maxShards": 4,
                "capacity": {"messagesPerSecond": 5},
                "forecast": {
                    "prometheusURL": url,
                    "lookback": "7d",
                    "step": "5m",
                    "shortHorizon": "15m",
                    "longHorizon": "1h",
                },
                "scaling": {"mode": "Auto", "leadTime": "2m", "scaleDownStabilization": "10m"},
                "consumerGroups": [
                    {
                        "name": "billing",
                        "scaleTargetRef": {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": "billing-consumer",
                        },
                        "messagesPerSecondPerReplica": 0.2,
                        "maxReplicas": 30,
                        "drainTime": "1h",
                    },
                ],
            },
        }
    )


def consumer() -> str:
    labels = {"app": "billing-consumer"}
    return yaml.safe_dump(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "billing-consumer", "namespace": NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "consumer", "image": "example.invalid/consumer:1"}]},
                },
            },
        }
    )


def quiet_watch() -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "foreshard.io/v1alpha1",
            "kind": "OrderParamForecast",
            "metadata": {"name": "watch-quiet", "namespace": NAMESPACE},
            "spec": {"queueRef": {"name": "tweets"}, "key": QUIET["key"], "horizons": ["6h"]},
        }
    )


QUIET: dict[str, str] = {}


def ready(opf: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in (opf.get("status") or {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def test_heavy_keys_and_the_tail_get_forecasts_with_quantiles_model_and_accuracy(
    local_cluster: LocalCluster, operator: dict[str, Any], prometheus: Any
) -> None:
    server, tweets = prometheus
    QUIET["key"] = min(tweets, key=lambda s: float(np.nansum(s.values))).key
    local_cluster.kubectl("apply", "-f", "-", stdin=consumer())
    local_cluster.kubectl("apply", "-f", "-", stdin=queue(server.url))

    def four_ready() -> bool:
        found = forecasts_of(local_cluster)
        return len(found) == TRACKED + 1 and all(ready(o) for o in found.values())

    wait_for(
        four_ready,
        120,
        "an OPF per heavy key and the tail, all Ready",
        lambda: json.dumps(forecasts_of(local_cluster))[-3000:],
    )
    found = forecasts_of(local_cluster)
    assert "tweets-tail" in found
    heaviest = sorted(tweets, key=lambda s: -float(np.nansum(s.values)))[:TRACKED]
    assert {o["spec"].get("key") for o in found.values()} == {s.key for s in heaviest} | {None}
    for opf in found.values():
        status = opf["status"]
        owner = opf["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("ShardAllocation", "tweets")
        assert status["model"] and status["why"] and status["candidates"] and status["fitSeconds"] > 0
        short, long = status["horizons"][:2]
        assert short["seconds"] == 900 and long["seconds"] == 3600
        assert all(p["p10"] <= p["p50"] <= p["p90"] <= p["p99"] for p in long["points"])
        accuracy = status["accuracy"]
        assert accuracy["mase"] > 0 and accuracy["maseNaive"] > 0 and 0 < accuracy["coverage90"] <= 1
    table = local_cluster.kubectl("get", "opf", "-n", NAMESPACE).stdout
    assert all(column in table.splitlines()[0] for column in ("MODEL", "MASE", "READY")), table


def test_a_persons_forecast_for_a_quiet_key_is_reconciled(
    local_cluster: LocalCluster, operator: dict[str, Any]
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=quiet_watch())
    wait_for(
        lambda: ready(forecasts_of(local_cluster).get("watch-quiet", {})),
        60,
        "the person's OPF Ready",
        lambda: json.dumps(forecasts_of(local_cluster).get("watch-quiet")),
    )
    status = forecasts_of(local_cluster)["watch-quiet"]["status"]
    assert [h["name"] for h in status["horizons"]] == ["short", "long", "spec-0"]
    assert status["horizons"][2]["seconds"] == 6 * 3600 and status["model"]


def test_the_consumer_deployment_is_scaled_ahead_of_its_forecast_backlog(
    local_cluster: LocalCluster, operator: dict[str, Any], prometheus: Any
) -> None:
    def scaled() -> bool:
        found = kubectl_json(local_cluster, "get", "deployment", "billing-consumer")
        return bool(found) and found["spec"]["replicas"] > 1

    wait_for(
        scaled,
        90,
        "billing-consumer scaled above 1 replica",
        lambda: json.dumps(
            (kubectl_json(local_cluster, "get", "shalloc", "tweets") or {})
            .get("status", {})
            .get("consumerGroups")
        ),
    )
    status = kubectl_json(local_cluster, "get", "shalloc", "tweets")["status"]
    (billing,) = status["consumerGroups"]
    replicas = kubectl_json(local_cluster, "get", "deployment", "billing-consumer")["spec"]["replicas"]
    # the group acknowledges less than arrives: the backlog is predicted to grow
    assert (
        billing["predictedBacklog"] > billing["backlog"] >= 0
        and billing["predictedAcks"] < billing["predictedArrivals"]
    )
    assert billing["targetReplicas"] == replicas == billing["replicas"], billing
    print(f"billing consumer sized: {json.dumps(billing)}")


def test_the_predicted_metrics_are_scraped_by_prometheus(operator: dict[str, Any], prometheus: Any) -> None:
    server, _ = prometheus
    server.add_targets("operator", [operator["metrics_address"]])

    def scraped() -> dict[str, float]:
        out = {}
        for name in ("foreshard_predicted_backlog", "foreshard_predicted_arrivals"):
            query = f'{name}{{namespace="{NAMESPACE}",queue="tweets",group="billing"}}'
            url = f"{server.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            with urllib.request.urlopen(url, timeout=5) as response:
                result = json.loads(response.read())["data"]["result"]
            if result:
                out[name] = float(result[0]["value"][1])
        return out

    wait_for(lambda: len(scraped()) == 2, 60, "both predictions in Prometheus", lambda: json.dumps(scraped()))
    values = scraped()
    assert values["foreshard_predicted_backlog"] > 0 and values["foreshard_predicted_arrivals"] > 0


def test_deleting_the_queue_deletes_its_forecasts_but_not_a_persons(
    local_cluster: LocalCluster, operator: dict[str, Any]
) -> None:
    local_cluster.kubectl("delete", "shalloc", "tweets", "-n", NAMESPACE, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: set(forecasts_of(local_cluster)) == {"watch-quiet"},
        60,
        "only the person's OPF left",
        lambda: str(sorted(forecasts_of(local_cluster))),
    )
    assert_no_rbac_denials(operator["log"])
