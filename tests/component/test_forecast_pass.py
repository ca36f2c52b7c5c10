"""The forecast cycle against a real Prometheus holding a queue's history (backfilled by promtool).

Kubernetes is an in-memory port here (the cluster test runs the same cycle against the API
server); Prometheus, the queries, the fits and the decisions are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from foreshard.adapters.kube import ScaleRef
from foreshard.adapters.prometheus import PrometheusHistory, connect
from foreshard.api.orderparamforecast import Target, object_name
from foreshard.core import decision
from foreshard.core.series import Series
from foreshard.localcluster.prometheus import PrometheusServer, backfill
from foreshard.reconcile import forecasts, shardallocation

pytestmark = pytest.mark.component

END_AT = 1_760_000_400.0
STEP = 300.0
DAYS = 3
NOW = END_AT + 20.0


def history() -> tuple[list[Series], list[Series]]:
    start, steps = END_AT - DAYS * 86_400.0, DAYS * 288
    wave = np.sin(2 * np.pi * np.arange(steps) / 288)
    rng = np.random.default_rng(7)
    keys = {"a": 300.0, "b": 120.0, "c": 40.0}
    series = [
        Series(k, start, STEP, rng.poisson(level * (1 + 0.5 * wave)).astype(float))
        for k, level in keys.items()
    ]
    series.append(Series("quiet", start, STEP, np.where(np.arange(steps) % 7 == 0, 1.0, 0.0)))
    total = np.sum([s.values for s in series], axis=0)
    # billing keeps up with 70 % of the arrivals: its backlog grows all the time
    return series, [Series("billing", start, STEP, np.floor(total * 0.7))]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    work = tmp_path_factory.mktemp("prometheus")
    arrivals, acks = history()
    backfill({"orders": arrivals}, work / "data", end_at_s=END_AT, acks={"orders": acks})
    with PrometheusServer(work) as running:
        yield running


class Counting:
    """The real reader, recording the ranges it was asked for."""

    def __init__(self, inner: PrometheusHistory) -> None:
        self.inner, self.ranges = inner, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def arrivals(
        self,
        queue: str,
        start_s: float,
        end_s: float,
        step_s: float,
        by: str = "key",
        only: Sequence[str] | None = None,
    ) -> dict[str, Series]:
        self.ranges.append((start_s, end_s, tuple(only or ())))
        return self.inner.arrivals(queue, start_s, end_s, step_s, by, only)


class Kube:
    """ForecastPort in memory."""

    def __init__(self, replicas: int = 1) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.replicas = {"billing-consumer": replicas}
        self.scaled: list[int] = []

    def list_forecasts(self, namespace: str) -> list[dict[str, Any]]:
        return [dict(o) for o in self.objects.values()]

    def create_forecast(self, manifest: dict[str, Any]) -> None:
        self.objects[manifest["metadata"]["name"]] = {
            **manifest,
            "metadata": {**manifest["metadata"], "generation": 1},
        }

    def delete_forecast(self, namespace: str, name: str) -> None:
        self.objects.pop(name, None)

    def patch_forecast_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        if name in self.objects:
            self.objects[name]["status"] = status

    def read_scale(self, namespace: str, ref: ScaleRef) -> int | None:
        return self.replicas.get(ref.name)

    def patch_scale(self, namespace: str, ref: ScaleRef, replicas: int) -> None:
        self.replicas[ref.name] = replicas
        self.scaled.append(replicas)


def queue(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1", "generation": 1},
        "spec": {
            "minShards": 1,
            "maxShards": 8,
            "capacity": {"messagesPerSecond": 1},
            "forecast": {
                "prometheusURL": url,
                "lookback": "3d",
                "step": "5m",
                "longHorizon": "1h",
                "shortHorizon": "15m",
            },
            "scaling": {"mode": "Auto", "leadTime": "2m"},
            "consumerGroups": [
                {
                    "name": "billing",
                    "scaleTargetRef": {"kind": "Deployment", "name": "billing-consumer"},
                    "messagesPerSecondPerReplica": 0.5,
                    "maxReplicas": 50,
                    "drainTime": "1h",
                },
            ],
        },
    }


@pytest.fixture(scope="module")
def first(prometheus: PrometheusServer) -> tuple[Kube, forecasts.QueueMemo, Counting, forecasts.PassResult]:
    kube, memo = Kube(), forecasts.QueueMemo()
    reader = Counting(connect(prometheus.url))
    result = forecasts.cycle(queue(prometheus.url), kube, memo, NOW, lambda _: reader, limit=2)
    return kube, memo, reader, result


def test_the_first_cycle_gives_the_heaviest_keys_and_the_tail_an_object_each_with_a_forecast(
    first: Any,
) -> None:
    kube, _, _, result = first
    assert sorted(kube.objects) == sorted(
        object_name("orders", t) for t in (Target.of_key("a"), Target.of_key("b"), Target.tail())
    )
    status = kube.objects[object_name("orders", Target.of_key("a"))]["status"]
    assert status["model"] and status["why"].startswith(status["model"][:20])
    assert len(status["candidates"]) >= 3
    short, long = status["horizons"][:2]
    assert (short["name"], long["name"]) == ("short", "long") and len(short["points"]) < len(long["points"])
    assert all(p["p10"] <= p["p50"] <= p["p90"] <= p["p99"] for p in long["points"])
    # key a is about 1 msg/s around its daily wave
    assert 0.3 < long["points"][0]["mean"] < 2.0
    accuracy = status["accuracy"]
    assert accuracy["replayed"] > 100 and 0 < accuracy["mase"] < 1.5 and 0 < accuracy["maseNaive"] < 1.5
    assert 0.6 <= accuracy["coverage90"] <= 1.0
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True"
    assert result.published.demand is not None and result.fits >= 3


def test_the_scaling_pass_plans_on_the_published_demand_without_reading_history(
    first: Any, prometheus: PrometheusServer
) -> None:
    body = queue(prometheus.url)
    spec = forecasts.QueueSpec.from_body(body)
    found = forecasts.plan_inputs(spec, 1, NOW + 5)
    assert found is not None
    spec, gathered, estimate = found
    decided = decision.decide(spec, gathered, {}, NOW + 5, estimate)
    assert decided.plan is not None and decided.forecasting.reason == "ForecastReady", decided
    # ~1.5 msg/s over all keys at 1 msg/s per shard with headroom: more than one shard
    assert decided.plan["targetShards"] > 1


def test_a_later_cycle_reads_only_the_newest_intervals_and_refits_only_a_share(
    first: Any, prometheus: PrometheusServer
) -> None:
    kube, memo, reader, _ = first
    reader.ranges.clear()
    result = forecasts.cycle(queue(prometheus.url), kube, memo, NOW + 30, lambda _: reader, limit=2)
    assert reader.ranges and all(end - start <= 3 * STEP for start, end, _ in reader.ranges)
    assert result.fits < 3


def test_a_persons_object_for_a_quiet_key_is_forecast_and_an_untracked_key_loses_the_operators(
    first: Any, prometheus: PrometheusServer
) -> None:
    kube, memo, reader, _ = first
    mine = {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "OrderParamForecast",
        "metadata": {"name": "watch-quiet", "namespace": "shop", "generation": 1},
        "spec": {"queueRef": {"name": "orders"}, "key": "quiet", "horizons": ["6h"]},
    }
    kube.objects["watch-quiet"] = mine
    forecasts.cycle(queue(prometheus.url), kube, memo, NOW + 60, lambda _: reader, limit=1)
    assert object_name("orders", Target.of_key("b")) not in kube.objects
    status = kube.objects["watch-quiet"]["status"]
    assert [h["name"] for h in status["horizons"]] == ["short", "long", "spec-0"]
    assert status["horizons"][2]["seconds"] == 6 * 3600
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


def test_a_consumer_group_whose_backlog_grows_is_scaled_ahead_and_its_forecasts_exported(first: Any) -> None:
    kube, _, _, result = first
    (billing,) = result.decisions
    # 30 % of ~1.5 msg/s over three days stays unacknowledged: tens of thousands of messages
    assert billing.backlog > 10_000 and billing.predicted_backlog >= billing.backlog
    assert billing.target is not None and billing.target > 1 and kube.scaled == [billing.target]
    labels = {"namespace": "shop", "queue": "orders", "group": "billing"}
    # later cycles of this module re-export; the figures move by a few messages at most
    assert REGISTRY.get_sample_value("foreshard_predicted_backlog", labels) == pytest.approx(
        billing.predicted_backlog, rel=0.01
    )
    assert REGISTRY.get_sample_value("foreshard_predicted_arrivals", labels) == pytest.approx(
        billing.predicted_arrivals, rel=0.05
    )


def test_an_unreachable_prometheus_keeps_the_forecasts_and_says_why(first: Any) -> None:
    kube, memo, _, _ = first
    body = queue("http://127.0.0.1:9")
    result = forecasts.cycle(body, kube, memo, NOW + 90)
    assert result.published.unreachable is not None and result.published.demand is None
    status = kube.objects[object_name("orders", Target.of_key("a"))]["status"]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Ready"] == "PrometheusUnreachable"


def test_a_forecast_read_before_an_outage_was_seen_does_not_end_it(prometheus: PrometheusServer) -> None:
    """A scaling pass saw Prometheus unreachable; a cycle that had read its history just before
    (its fits take seconds) must not put a ready forecast back: only a later read ends the outage."""
    body = queue(prometheus.url)
    spec = forecasts.QueueSpec.from_body(body)
    dead = lambda _: connect("http://127.0.0.1:9", timeout_s=2, retries=0)  # noqa: E731
    seen = shardallocation.gather(spec, 2, NOW + 200, dead)
    assert seen.unreachable is not None

    late = forecasts.cycle(body, Kube(), forecasts.QueueMemo(), NOW + 150, lambda _: connect(prometheus.url))
    assert late.published.demand is not None  # a good forecast, of history read before the outage
    found = forecasts.plan_inputs(spec, 2, NOW + 210)
    assert found is not None
    decided = decision.decide(found[0], found[1], {}, NOW + 210, found[2])
    assert decided.forecasting.reason == "PrometheusUnreachable", decided.forecasting
    assert decided.holding is not None and decided.holding.reason == "MissingData"

    after = forecasts.cycle(body, Kube(), forecasts.QueueMemo(), NOW + 240, lambda _: connect(prometheus.url))
    found = forecasts.plan_inputs(spec, 2, NOW + 250)
    assert found is not None and found[1].unreachable is None and after.published.demand is not None
    decided = decision.decide(found[0], found[1], {}, NOW + 250, found[2])
    assert decided.forecasting.reason == "ForecastReady", decided.forecasting
