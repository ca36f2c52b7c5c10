"""One reconcile pass of a ShardAllocation: gather -> decide (core) -> act (adapters) -> report.

Level-based: nothing is remembered between passes except what status says; the timer re-runs the
pass, and a fresh process reaches the same decision from the same history, status and time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from foreshard.adapters import prometheus
from foreshard.adapters.kube import KubePort
from foreshard.adapters.metrics import (
    DESIRED_SHARDS,
    FORECAST_PEAK,
    FORECAST_READY,
    PLANNED_SHARDS,
    READY_SHARDS,
)
from foreshard.api.shardallocation import QueueSpec
from foreshard.core import decision, queue_status, workload
from foreshard.core.series import Series
from foreshard.reconcile import forecasts


class HistoryReader(Protocol):
    def arrivals(self, queue: str, start_s: float, end_s: float, step_s: float) -> dict[str, Series]: ...


Connect = Callable[[str], HistoryReader]


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    scaled_from: int | None  # previous replica count when this pass changed it
    event: str | None = None  # the Scaled Event's message


def gather(spec: QueueSpec, replicas: int, now_s: float, connect: Connect) -> decision.Gathered:
    """The arrival history on the grid of whole steps before now (same step, same data, same plan)."""
    settings = spec.forecast
    if not settings.prometheus_url:
        return decision.Gathered(replicas)
    end_s = now_s // settings.step_s * settings.step_s
    try:
        history = connect(settings.prometheus_url).arrivals(
            spec.name, end_s - settings.lookback_s, end_s, settings.step_s
        )
    except prometheus.PrometheusUnreachable as error:
        return decision.Gathered(replicas, unreachable=f"Prometheus at {settings.prometheus_url}: {error}")
    return decision.Gathered(replicas, history)


def connect_briefly(url: str) -> HistoryReader:
    # no retry, 10 s timeout: a dead Prometheus costs a pass seconds, not the client's backoff;
    # the timer is the retry
    return prometheus.connect(url, timeout_s=10, retries=0)


def reconcile(
    body: dict[str, Any], kube: KubePort, now_s: float, connect: Connect = connect_briefly
) -> Outcome:
    spec = QueueSpec.from_body(body)
    before = kube.observe_stateful_set(spec.namespace, workload.shard_name(spec.name))
    previous: Mapping[str, Any] = body.get("status") or {}
    # the forecast loop (reconcile/forecasts.py) publishes the demand; fit here only without it
    published = forecasts.plan_inputs(spec, before.replicas, now_s)
    if published is not None:
        spec, gathered, estimate = published
        decided = decision.decide(spec, gathered, previous, now_s, estimate)
    else:
        decided = decision.decide(spec, gather(spec, before.replicas, now_s, connect), previous, now_s)
    desired = decided.replicas
    kube.apply(queue_status.owned_by(workload.headless_service(spec), body))
    kube.apply(queue_status.owned_by(workload.stateful_set(spec, desired), body))
    after = kube.observe_stateful_set(spec.namespace, workload.shard_name(spec.name))
    generation = int(body["metadata"].get("generation", 0))
    report = queue_status.Report((decided.forecasting,), decided.holding, decided.plan, decided.last_decision)
    status = queue_status.next_status(
        dict(previous), generation, desired, after, decision.timestamp(now_s), report
    )
    _export(spec.name, decided, desired, after.ready_replicas)
    scaled_from = before.replicas if before.replicas != desired else None
    return Outcome(status, scaled_from, decided.event)


def _export(queue: str, decided: decision.Decision, desired: int, ready: int) -> None:
    DESIRED_SHARDS.labels(queue).set(desired)
    READY_SHARDS.labels(queue).set(ready)
    FORECAST_READY.labels(queue).set(1 if decided.forecasting.status == "True" else 0)
    if decided.plan is not None:
        FORECAST_PEAK.labels(queue).set(decided.plan["forecastPeak"])
        PLANNED_SHARDS.labels(queue).set(decided.plan["targetShards"])
