"""The scaling decision of one reconcile pass (core/decision.py) and the demand it sizes to."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from foreshard.api.shardallocation import QueueSpec, seconds
from foreshard.core import demand
from foreshard.core.decision import Gathered, decide, plan_id, steady_until, timestamp
from foreshard.core.forecasting import Forecast, InsufficientHistory
from foreshard.core.series import Series

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0  # a whole number of 5-minute steps
STEP = 300.0
HISTORY = {"k": Series("k", NOW - 10 * STEP, STEP, np.ones(10))}  # its content is the estimator's business


def spec(mode: str = "Auto", approve: str | None = None, **overrides: Any) -> QueueSpec:
    body: dict[str, Any] = {
        "metadata": {"name": "orders", "namespace": "queues", "annotations": {}},
        "spec": {
            "minShards": 1,
            "maxShards": 8,
            "capacity": {"messagesPerSecond": 10},
            "forecast": {"prometheusURL": "http://prometheus:9090"},
            "scaling": {"mode": mode, "headroom": 0, "scaleDownStabilization": "5m", "leadTime": "2m"},
        },
    }
    if approve is not None:
        body["metadata"]["annotations"]["foreshard.io/approve-plan"] = approve
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            body["spec"][section][field] = value
        else:
            body["spec"][section] = value
    return QueueSpec.from_body(body)


def flat(rate: float, trusted: bool = True, observed: float | None = None) -> Any:
    """An estimator that forecasts `rate` msg/s for the next hour (the planner sees only this)."""

    def estimate(history: Any, now_s: float, horizon_s: float, quantile: float) -> demand.Demand:
        counts = np.full(13, rate * STEP)
        summed = Forecast("__total__", now_s, STEP, counts, {quantile: counts}, "flat", trusted)
        return demand.Demand(summed, rate if observed is None else observed, 1, 1.0 if trusted else 0.0)

    return estimate


def insufficient(history: Any, now_s: float, horizon_s: float, quantile: float) -> demand.Demand:
    raise InsufficientHistory("2 usable intervals of history, need at least 3")


def previous(target: int, held_s: float) -> dict[str, Any]:
    return {"plan": {"targetShards": target, "decidedAt": timestamp(NOW - held_s)}}


def conditions_of(decision: Any) -> tuple[str, str]:
    return decision.forecasting.status, decision.forecasting.reason


def test_auto_scales_out_to_the_planned_shards_at_once() -> None:
    decision = decide(spec(), Gathered(2, HISTORY), {}, NOW, flat(45.0))
    assert decision.replicas == 5
    assert decision.plan is not None
    assert (decision.plan["targetShards"], decision.plan["forecastPeak"]) == (5, 45.0)
    assert decision.plan["expectedUtilisation"] == 0.9
    assert decision.plan["id"] == plan_id("orders", 2, 5)
    assert conditions_of(decision) == ("True", "ForecastReady")
    assert decision.event is not None and decision.event.startswith("Shards 2 -> 5. ScaleOut")
    assert "45.00 msg/s" in decision.event


@pytest.mark.parametrize(
    ("rate", "current", "status"),
    [(45.0, 2, {}), (5.0, 5, previous(1, 3600)), (45.0, 0, {})],
    ids=["scale-out", "stabilized-scale-in", "first-pass"],
)
def test_dry_run_never_changes_replicas(rate: float, current: int, status: dict[str, Any]) -> None:
    decision = decide(spec("DryRun"), Gathered(current, HISTORY), status, NOW, flat(rate))
    assert decision.replicas == max(current, 1)  # only the spec's bounds, never the plan
    assert decision.plan is not None and decision.plan["targetShards"] != decision.replicas
    assert decision.holding is not None and decision.holding.reason == "DryRun"
    assert decision.event is None or decision.event.startswith("Shards 0 -> 1.")


@pytest.mark.parametrize(
    ("status", "replicas", "held_since"),
    [
        ({}, 5, NOW),  # a new lower target starts the wait
        (previous(2, 100), 5, NOW - 100),  # held, not yet long enough
        (previous(2, 300), 2, NOW - 300),  # held for scaleDownStabilization: apply
        (previous(3, 3600), 5, NOW),  # another lower target restarts the wait
    ],
    ids=["new", "waiting", "stabilized", "changed"],
)
def test_scale_down_waits_for_stabilization(status: dict[str, Any], replicas: int, held_since: float) -> None:
    decision = decide(spec(), Gathered(5, HISTORY), status, NOW, flat(15.0))
    assert decision.replicas == replicas
    assert decision.plan is not None and decision.plan["targetShards"] == 2
    assert decision.plan["decidedAt"] == timestamp(held_since)
    if replicas == 5:
        assert decision.holding is not None and decision.holding.reason == "Stabilizing"
        assert timestamp(held_since + 300) in decision.holding.message


@pytest.mark.parametrize(
    ("gathered", "estimate", "reason", "replicas"),
    [
        (Gathered(2, HISTORY), flat(80.0, trusted=False, observed=25.0), "ForecastUntrusted", 3),
        (Gathered(2, HISTORY), insufficient, "InsufficientHistory", 2),
    ],
    ids=["untrusted", "insufficient-history"],
)
def test_untrusted_forecast_falls_back_to_reactive_sizing(
    gathered: Gathered, estimate: Any, reason: str, replicas: int
) -> None:
    decision = decide(spec(), gathered, {}, NOW, estimate)
    assert conditions_of(decision) == ("False", reason)
    assert decision.replicas == replicas  # never the untrusted 80 msg/s; a lower count waits
    assert decision.last_decision.startswith("ReactiveFallback")


@pytest.mark.parametrize(
    ("gathered", "reason"),
    [
        (Gathered(5, unreachable="connection refused"), "PrometheusUnreachable"),
        (Gathered(5, {}), "HistoryMissing"),
        (
            Gathered(5, {"k": Series("k", NOW - 3 * STEP, STEP, np.array([9.0, 9.0, np.nan]))}),
            "HistoryMissing",
        ),
    ],
    ids=["unreachable", "no-series", "newest-interval-absent"],
)
def test_missing_data_holds_the_current_shards_and_says_why(gathered: Gathered, reason: str) -> None:
    decision = decide(spec(), gathered, previous(1, 3600), NOW, flat(0.0))
    assert decision.replicas == 5  # a rate of zero would have scaled in to 1 at once
    assert conditions_of(decision) == ("False", reason)
    assert decision.holding is not None and decision.holding.reason == "MissingData"
    assert decision.plan is None and decision.event is None


def test_an_outage_longer_than_the_stabilization_window_never_lowers_replicas() -> None:
    status: dict[str, Any] = {"plan": decide(spec(), Gathered(5, HISTORY), {}, NOW, flat(5.0)).plan}
    replicas = 5
    for elapsed in range(10, 3 * 300, 10):  # one pass every 10 s for three windows
        decision = decide(
            spec(), Gathered(replicas, unreachable="timed out"), status, NOW + elapsed, flat(5.0)
        )
        replicas, status = decision.replicas, {"plan": decision.plan}
        assert replicas == 5
    assert decision.forecasting.reason == "PrometheusUnreachable"
    assert "timed out" in decision.forecasting.message


def test_forecasting_resumes_when_data_returns_and_a_scale_in_waits_afresh() -> None:
    outage = decide(spec(), Gathered(5, unreachable="refused"), previous(1, 3600), NOW, flat(5.0))
    back = decide(spec(), Gathered(5, HISTORY), {"plan": outage.plan}, NOW + 10, flat(5.0))
    assert conditions_of(back) == ("True", "ForecastReady")
    assert back.replicas == 5 and back.plan is not None and back.plan["decidedAt"] == timestamp(NOW + 10)
    later = decide(spec(), Gathered(5, HISTORY), {"plan": back.plan}, NOW + 310, flat(5.0))
    assert later.replicas == 1


@pytest.mark.parametrize(
    ("annotation", "replicas", "holding"),
    [(None, 2, "AwaitingApproval"), ("someone-elses-plan", 2, "AwaitingApproval"), ("MATCH", 5, None)],
    ids=["no-annotation", "other-plan", "matching-plan"],
)
def test_approve_needs_the_matching_annotation(
    annotation: str | None, replicas: int, holding: str | None
) -> None:
    approve = plan_id("orders", 2, 5) if annotation == "MATCH" else annotation
    decision = decide(spec("Approve", approve), Gathered(2, HISTORY), {}, NOW, flat(45.0))
    assert decision.replicas == replicas
    assert (decision.holding.reason if decision.holding else None) == holding
    if holding:
        assert decision.holding is not None and plan_id("orders", 2, 5) in decision.holding.message


@pytest.mark.parametrize(
    ("overrides", "current", "rate", "replicas"),
    [
        ({}, 2, 1000.0, 8),  # maxShards caps the forecast
        ({"minShards": 3}, 3, 0.0, 3),  # minShards floors it
        ({}, 12, 45.0, 8),  # above a lowered maxShards: back at once, no stabilization
        ({"scaling__maxStepUp": 2}, 2, 70.0, 4),  # step limit
        ({"scaling__maxStepDown": 1, "minShards": 1}, 5, 0.0, 5),  # a lower target still waits
    ],
    ids=["max", "min", "above-max", "step-up", "step-down-waits"],
)
def test_replicas_are_clamped_to_the_spec_bounds(
    overrides: dict[str, Any], current: int, rate: float, replicas: int
) -> None:
    decision = decide(spec(**overrides), Gathered(current, HISTORY), {}, NOW, flat(rate))
    assert decision.replicas == replicas


def test_a_fresh_process_reaches_the_same_decision_from_status_alone() -> None:
    first = decide(spec(), Gathered(5, HISTORY), {}, NOW, flat(15.0))
    assert first.plan is not None
    later = decide(spec(), Gathered(5, HISTORY), {"plan": first.plan}, NOW + 301, flat(15.0))
    assert later.replicas == 2
    assert later.plan is not None and later.plan["decidedAt"] == first.plan["decidedAt"]
    again = decide(spec(), Gathered(5, HISTORY), {"plan": first.plan}, NOW + 301, flat(15.0))
    assert again == later


def test_without_a_prometheus_url_the_queue_runs_min_shards() -> None:
    decision = decide(spec(forecast={}), Gathered(4), {}, NOW, flat(45.0))
    assert (decision.replicas, decision.plan) == (1, None)
    assert conditions_of(decision) == ("False", "ForecastDisabled")


def test_demand_forecasts_the_heaviest_keys_and_sums_the_rest_as_a_tail() -> None:
    rng = np.random.default_rng(7)
    steps = 7 * 288
    daily = 1.0 + 0.5 * np.sin(2 * np.pi * np.arange(steps) / 288)
    history = {
        f"k{i:02d}": Series(
            f"k{i:02d}", NOW - steps * STEP, STEP, rng.poisson(daily * (60 - i)).astype(float)
        )
        for i in range(60)
    }
    bounded = demand.bound(history, limit=50)
    assert len(bounded) == 51 and bounded[-1].key == demand.TAIL
    assert [s.key for s in bounded[:2]] == ["k00", "k01"]
    found = demand.estimate(history, NOW, 3600.0, 0.9, limit=50)
    assert found.keys == 51
    peak = float(found.forecast.quantile(0.9).max() / STEP)
    mean_rate = sum(float(np.mean(s.values)) for s in history.values()) / STEP
    assert mean_rate < peak < 4 * mean_rate
    assert len(found.forecast.mean) == 12


def test_crd_durations_read_as_seconds() -> None:
    assert [seconds(t) for t in ("7d", "1h30m", "2.5s", "1w")] == [604800.0, 5400.0, 2.5, 604800.0]
    with pytest.raises(ValueError, match="not a duration"):
        seconds("5 minutes")


@pytest.mark.parametrize("mode", ["Auto", "DryRun"])
def test_decide_answers_the_same_from_now_until_steady_until_says_it_may_change(mode: str) -> None:
    """The replay of `foreshard simulate` skips the passes between now and steady_until (DryRun
    keeps one shard, so its plan follows every window edge)."""
    rates = np.array([2.0, 6.0, 6.0, 30.0, 30.0, 12.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    counts = rates * STEP
    known = Forecast("__total__", NOW, STEP, counts, {0.9: counts}, "fixed", True)

    def published(history: Any, now_s: float, horizon_s: float, quantile: float) -> demand.Demand:
        return demand.Demand(known, 2.0, 1, 1.0)  # one forecast, whatever the time

    queue = spec(mode, forecast__shortHorizon="10m", scaling__leadTime="2m")
    status: dict[str, Any] = {}
    replicas, changes, now = 1, 0, NOW
    while now < NOW + 3000:
        decided = decide(queue, Gathered(replicas, HISTORY), status, now, published)
        status = {"plan": decided.plan}
        if decided.replicas != replicas:  # new facts for the next pass: nothing to vouch for
            replicas, now = decided.replicas, now + 5.0
            continue
        until = steady_until(queue, status, now, NOW)
        assert until > now
        for later in np.arange(now + 5.0, until, 5.0):
            again = decide(queue, Gathered(replicas, HISTORY), status, float(later), published)
            assert (again.replicas, again.plan) == (replicas, decided.plan), (now, later, until)
        changes += decide(queue, Gathered(replicas, HISTORY), status, until, published) != decided
        now = until
    assert changes > 0  # the edges it names are where answers do change
