"""The scaling decision of one reconcile pass. Pure: facts and the previous status in, decision out.

    no data (Prometheus unreachable, no series, newest interval empty) --> hold the current shards
    history --demand.estimate--> Forecast --planning.plan_target--> wanted shards (clamped, step-limited)
    wanted < current? --held for scaleDownStabilization (previous status.plan)?--> proposed
    mode: Auto applies proposed; DryRun applies nothing; Approve applies it once
          foreshard.io/approve-plan names the plan's id

The previous status is the only memory: a fresh process given the same facts, status and `now`
reaches the same decision (plan ids are content hashes, decidedAt is carried over from status).
`steady_until` says how long the same facts keep giving the same answer (the trace replay of
`foreshard simulate` uses it to skip the passes that would change nothing).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from foreshard.api import conditions
from foreshard.api.conditions import Condition
from foreshard.api.shardallocation import QueueSpec
from foreshard.core import demand, workload
from foreshard.core.forecasting import Forecast, InsufficientHistory
from foreshard.core.planning import TargetDecision, TargetPolicy, plan_target
from foreshard.core.series import Series

# history, now_s, horizon_s, quantile -> Demand; a seam so tests can dictate trust and peaks
Estimator = Callable[[Mapping[str, Series], float, float, float], demand.Demand]


@dataclass(frozen=True)
class Gathered:
    """What one pass read: the StatefulSet's replicas and, when forecasting is on, the history."""

    replicas: int  # 0 when the StatefulSet does not exist yet
    history: Mapping[str, Series] | None = None  # None: forecasting off, or Prometheus unreachable
    unreachable: str | None = None  # why Prometheus could not be read


@dataclass(frozen=True)
class Decision:
    replicas: int  # what the StatefulSet should ask for after this pass
    forecasting: Condition
    plan: dict[str, Any] | None = None  # status.plan
    holding: Condition | None = None  # why replicas differ from the plan (DryRun, approval, stabilization)
    last_decision: str = ""
    event: str | None = None  # Event message when this pass changes the replica count


def timestamp(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def plan_id(queue: str, current: int, target: int) -> str:
    """Stable while the same change is wanted, so an approval outlives forecast jitter."""
    return hashlib.sha256(f"{queue}:{current}->{target}".encode()).hexdigest()[:12]


def decide(
    spec: QueueSpec,
    gathered: Gathered,
    previous: Mapping[str, Any],
    now_s: float,
    estimate: Estimator | None = None,
) -> Decision:
    """The replicas to run, the plan and the conditions that explain them."""
    if not spec.forecast.prometheus_url:
        replicas = workload.desired_replicas(spec, None)
        return Decision(
            replicas,
            Condition(
                conditions.FORECASTING,
                "False",
                "ForecastDisabled",
                "Set spec.forecast.prometheusURL to size shards ahead of demand; running minShards.",
            ),
            last_decision=f"Forecasting is off: {replicas} shards (minShards).",
            event=_event(gathered.replicas, replicas, "minShards"),
        )
    current = workload.desired_replicas(spec, gathered.replicas or None)
    missing = _missing(gathered)
    if missing is not None:
        return _hold_on_missing_data(gathered, current, *missing)
    # by default: fit here, with seasons on the queue's clock (spec.forecast.timeScale)
    estimate = estimate or partial(demand.estimate, day_s=spec.forecast.day_s)
    forecast, rate, forecasting = _forecast(spec, gathered, now_s, estimate)
    if spec.messages_per_second is None:
        why = (
            "capacity is unknown: capacity.learn has not measured enough broker load yet (status."
            "learntCapacity says what it saw); set capacity.messagesPerSecond to plan meanwhile"
        )
        return Decision(current, forecasting, last_decision=f"{why}; holding {current} shards.")
    target = plan_target(forecast, now_s, current, rate, (), _policy(spec))
    wanted = _limited(spec, current, target.target)
    plan = _plan(spec, current, wanted, target, previous.get("plan") or {}, now_s)
    proposed = _stabilized(spec, current, wanted, previous.get("plan") or {}, now_s)
    replicas, holding = _apply(spec, current, proposed, plan)
    line = f"{target.reason}: {plan['why']}; running {replicas} shards."
    peak = f"{target.reason}, q{spec.forecast.planning_quantile:g} peak {target.forecast_peak:.2f} msg/s"
    return Decision(replicas, forecasting, plan, holding, line, _event(gathered.replicas, replicas, peak))


def steady_until(spec: QueueSpec, previous: Mapping[str, Any], now_s: float, grid_s: float) -> float:
    """The first time after `now_s` at which `decide`, given the same facts and the status it just
    wrote, may answer differently.

    Time enters a decision in two places only: the planning windows ([now, now + horizon] and
    [now + lead, now + reach]) take in or drop a forecast interval when one of their edges crosses
    the forecast grid (interval starts at `grid_s` plus multiples of the step), and a held scale-in
    applies once its stabilization has elapsed since the plan's decidedAt.
    """
    step, scaling = spec.forecast.step_s, spec.scaling
    reach = spec.forecast.long_horizon_s
    if spec.forecast.short_horizon_s is not None:
        reach = max(spec.forecast.short_horizon_s, scaling.lead_s)
    edges = [
        grid_s + (math.floor((now_s + offset - grid_s) / step) + 1) * step - offset
        for offset in {0.0, scaling.lead_s, reach, spec.forecast.long_horizon_s}
    ]
    held_since = (previous.get("plan") or {}).get("decidedAt")
    if held_since:
        expiry = parse_timestamp(held_since) + scaling.stabilization_s
        edges += [expiry] if expiry > now_s else []
    return min(edges)


def _policy(spec: QueueSpec) -> TargetPolicy:
    assert spec.messages_per_second is not None  # checked by the caller
    return TargetPolicy(
        capacity=spec.messages_per_second,
        lead_s=spec.scaling.lead_s,
        horizon_s=spec.forecast.long_horizon_s,
        short_horizon_s=spec.forecast.short_horizon_s,
        quantile=spec.forecast.planning_quantile,
        headroom=spec.scaling.headroom,
        min_shards=spec.min_shards,
        max_shards=spec.max_shards,
    )


def _missing(gathered: Gathered) -> tuple[str, str] | None:
    """(reason, why) when this pass has no data to size on; None when the newest interval has some.

    Missing is not zero: an unreachable Prometheus, a queue without series, or a newest interval
    that no key reported (brokers not scraped) say nothing about demand, and sizing on a rate of
    0 would scale in, after the stabilization window, on no evidence at all.
    """
    if gathered.history is None:
        return "PrometheusUnreachable", gathered.unreachable or "no history was read"
    if not gathered.history:
        return "HistoryMissing", "Prometheus has no arrival series for this queue"
    # plain floats: this runs every pass, and every sync of a trace replay
    newest = [float(s.values[-1]) for s in gathered.history.values() if len(s)]
    if all(math.isnan(value) for value in newest):  # also when no series has any interval
        return "HistoryMissing", "no key reported arrivals in the newest interval (brokers not scraped?)"
    return None


def _hold_on_missing_data(gathered: Gathered, current: int, reason: str, why: str) -> Decision:
    """Keep the current shards; the plan is dropped so that a later scale-in waits afresh."""
    forecasting = _condition("False", reason, f"{why}; holding {current} shards until data returns.")
    holding = _holding("MissingData", f"Holding {current} shards: {why}. Missing data is not zero.")
    line = f"{reason}: {why}; holding {current} shards."
    return Decision(current, forecasting, None, holding, line, _event(gathered.replicas, current, reason))


def _forecast(
    spec: QueueSpec, gathered: Gathered, now_s: float, estimate: Estimator
) -> tuple[Forecast | None, float, Condition]:
    """The summed forecast (None when there is none), the latest rate, and the Forecasting condition."""
    assert gathered.history is not None  # missing data was handled by the caller
    settings = spec.forecast
    try:
        found = estimate(gathered.history, now_s, settings.long_horizon_s, settings.planning_quantile)
    except InsufficientHistory as error:
        rate = demand.latest_rate(list(gathered.history.values()))
        return None, rate, _condition("False", "InsufficientHistory", f"{error}; sizing reactively.")
    if not found.forecast.trusted:
        message = f"{found.forecast.model}, below the {demand.TRUSTED_SHARE:.0%} needed; sizing reactively."
        return found.forecast, found.observed_rate, _condition("False", "ForecastUntrusted", message)
    message = f"Forecast {found.keys} series ({found.forecast.model}) from Prometheus history."
    return found.forecast, found.observed_rate, _condition("True", "ForecastReady", message)


def _condition(status: str, reason: str, message: str) -> Condition:
    return Condition(conditions.FORECASTING, status, reason, message)


def _limited(spec: QueueSpec, current: int, target: int) -> int:
    """Step limits first, then the spec's bounds, which are intent and always win."""
    policy = spec.scaling
    if policy.max_step_up is not None:
        target = min(target, current + policy.max_step_up)
    if policy.max_step_down is not None:
        target = max(target, current - policy.max_step_down)
    return workload.desired_replicas(spec, target)


def _stabilized(
    spec: QueueSpec, current: int, wanted: int, previous_plan: Mapping[str, Any], now_s: float
) -> int:
    """`wanted`, except that a lower count waits until the previous plans asked for it long enough.

    Removal is immediate and return takes a lead time, so the same lower target must have held in
    status for scaleDownStabilization; a target that changes restarts the wait (decidedAt moves).
    (`current` is already within the spec's bounds, so a lowered maxShards applies at once.)
    """
    if wanted >= current:
        return wanted
    held_since = previous_plan.get("decidedAt")
    if previous_plan.get("targetShards") != wanted or not held_since:
        return current
    return wanted if now_s - parse_timestamp(held_since) >= spec.scaling.stabilization_s else current


def _plan(
    spec: QueueSpec,
    current: int,
    wanted: int,
    target: TargetDecision,
    previous_plan: Mapping[str, Any],
    now_s: float,
) -> dict[str, Any]:
    same = previous_plan.get("targetShards") == wanted and previous_plan.get("decidedAt")
    capacity = wanted * (spec.messages_per_second or 1.0)
    return {
        "id": plan_id(spec.name, current, wanted),
        "targetShards": wanted,
        "forecastPeak": round(target.forecast_peak, 3),
        "expectedUtilisation": round(target.forecast_peak / capacity, 3),
        "moves": 0,  # the timer's migration step lists the moves (reconcile/shardallocation.with_moves)
        "why": target.message,
        "decidedAt": previous_plan["decidedAt"] if same else timestamp(now_s),
    }


def _apply(
    spec: QueueSpec, current: int, proposed: int, plan: Mapping[str, Any]
) -> tuple[int, Condition | None]:
    """Replicas after the mode has its say, and the reason when they stay below or above the plan."""
    mode = spec.scaling.mode
    if mode == "DryRun" and proposed != current:
        return current, _holding(
            "DryRun",
            f"DryRun: plan {plan['id']} ({plan['targetShards']} shards) "
            "is recorded only; set scaling.mode to Auto to apply it.",
        )
    if mode == "Approve" and proposed != current and spec.approved_plan != plan["id"]:
        return current, _holding(
            "AwaitingApproval",
            f"Plan {plan['id']} wants {proposed} shards; annotate the queue with "
            f"foreshard.io/approve-plan={plan['id']} to apply it.",
        )
    if proposed != plan["targetShards"]:
        until = timestamp(parse_timestamp(plan["decidedAt"]) + spec.scaling.stabilization_s)
        return proposed, _holding(
            "Stabilizing",
            f"Holding {proposed} shards; {plan['targetShards']} will apply at {until} if "
            "the forecast still agrees.",
        )
    return proposed, None


def _holding(reason: str, message: str) -> Condition:
    return Condition(conditions.SCALING, "False", reason, message)


def _event(before: int, after: int, why: str) -> str | None:
    return None if before == after else f"Shards {before} -> {after}. {why}."
