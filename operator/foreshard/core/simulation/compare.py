"""The fair comparison: every policy swept over its own knob grid, compared on curves.

Each policy gives a curve of (shard-hours, SLO-violation minutes). For every reactive-hpa grid
point, predictive's curve is read at that point's shard-hours (violation ratio) and at that
point's violation minutes (shard-hours ratio). A curve is first made monotone (more shard-hours
never buy more violations: a running minimum over points sorted by shard-hours), read by
linear interpolation inside its range and at the nearest end outside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from foreshard.core.simulation.engine import SimConfig, SimResult, simulate
from foreshard.core.simulation.planner import (
    DECIDE,
    ForecastReplay,
    OperatorPlanner,
    ReplaySettings,
    dotted_path,
)
from foreshard.core.simulation.policies import KedaLag, Policy, ReactiveHpa, StaticPeak
from foreshard.core.simulation.workload import Workload

HPA_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)  # target utilisation
KEDA_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)  # lag threshold per replica, in units of capacity x one sync
# planning utilisation of the replayed queue, read like the HPA's target: up to 1 it is
# 1 / (1 + spec.scaling.headroom) at planningQuantile 0.9; above 1 (more frugal than any headroom
# the CRD allows) headroom is 0 and the planning quantile drops (planner.knob_settings)
PREDICTIVE_GRID = (0.5, 0.6, 0.7, 0.8, 1 / 1.2, 0.9, 1.0, 1.25, 1.5)
STATIC_GRID = (0.9, 0.99, 1.0)  # quantile of the trace's rate
HPA_REFERENCE = 0.7
PREDICTIVE_DEFAULT = 1 / 1.2  # the CRD's defaults: headroom 0.2, planningQuantile 0.9
POLICIES = ("predictive", "reactive-hpa", "keda-lag", "static-peak")
FAILED = math.inf  # a ratio whose denominator is 0 while its numerator is not


@dataclass(frozen=True)
class Point:
    knob: float
    shard_hours: float
    violation_minutes: float


def make_policy(
    name: str, knob: float, workload: Workload, config: SimConfig, forecasts: ForecastReplay | None = None
) -> Policy:
    """A competitor, or (`predictive`) the operator's decision replayed on `forecasts`."""
    capacity = config.capacity
    if name == "reactive-hpa":
        return ReactiveHpa(capacity, knob)
    if name == "keda-lag":
        return KedaLag(capacity, knob)
    if name == "static-peak":
        return StaticPeak(capacity, knob, workload.trace_rates())
    if name == "predictive":
        forecasts = forecasts or ForecastReplay(workload, ReplaySettings())
        return OperatorPlanner(forecasts, capacity, config.lead_s, knob, workload.step_s)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def grid_of(name: str) -> tuple[float, ...]:
    return {
        "reactive-hpa": HPA_GRID,
        "keda-lag": KEDA_GRID,
        "predictive": PREDICTIVE_GRID,
        "static-peak": STATIC_GRID,
    }[name]


def sweep(
    workload: Workload,
    config: SimConfig,
    policies: Sequence[str] = POLICIES,
    progress: Callable[[str, float, SimResult], None] | None = None,
    forecasts: ForecastReplay | None = None,
) -> dict[str, list[SimResult]]:
    """Every policy over its grid; the operator's knobs share one replay of the forecast loop
    (`forecasts`, which may be shared by sweeps of the same workload at other lead times)."""
    forecasts = forecasts or ForecastReplay(workload, ReplaySettings())
    results: dict[str, list[SimResult]] = {}
    for name in policies:
        for knob in grid_of(name):
            result = simulate(workload, make_policy(name, knob, workload, config, forecasts), config)
            results.setdefault(name, []).append(result)
            if progress is not None:
                progress(name, knob, result)
    return results


def monotone(points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
    """Shard-hours ascending and violations as their running minimum."""
    ordered = sorted(points, key=lambda p: (p.shard_hours, p.violation_minutes))
    hours = np.array([p.shard_hours for p in ordered])
    violations = np.minimum.accumulate(np.array([p.violation_minutes for p in ordered]))
    return hours, violations


def violations_at(points: Sequence[Point], shard_hours: float) -> float:
    hours, violations = monotone(points)
    return float(np.interp(shard_hours, hours, violations))


def shard_hours_for(points: Sequence[Point], violation_minutes: float) -> float:
    """Fewest shard-hours whose interpolated violations reach `violation_minutes`."""
    hours, violations = monotone(points)
    if violation_minutes >= violations[0]:
        return float(hours[0])
    reached = np.nonzero(violations <= violation_minutes)[0]
    if len(reached) == 0:
        return float(hours[-1])
    j = int(reached[0])
    span = violations[j - 1] - violations[j]
    share = (violations[j - 1] - violation_minutes) / span if span > 0 else 1.0
    return float(hours[j - 1] + share * (hours[j] - hours[j - 1]))


def ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return 0.0 if numerator == 0 else FAILED
    return numerator / denominator


def violation_ratio(predictive: Sequence[Point], hpa: Sequence[Point]) -> float:
    return float(np.mean([ratio(violations_at(predictive, p.shard_hours), p.violation_minutes) for p in hpa]))


def shard_hours_ratio(predictive: Sequence[Point], hpa: Sequence[Point]) -> float:
    return float(
        np.mean([ratio(shard_hours_for(predictive, p.violation_minutes), p.shard_hours) for p in hpa])
    )


def points(results: Sequence[SimResult]) -> list[Point]:
    return [Point(r.knob, r.shard_hours, r.slo_violation_minutes) for r in results]


def at_knob(results: Sequence[SimResult], knob: float) -> SimResult:
    return min(results, key=lambda r: abs(r.knob - knob))


def report(results: dict[str, list[SimResult]]) -> dict[str, object]:
    """The comparison's JSON: every curve and, when both are present, the three ratios."""
    body: dict[str, object] = {
        "policies": {name: [r.summary() for r in runs] for name, runs in results.items()},
    }
    if "predictive" in results and "reactive-hpa" in results:
        predictive, hpa = results["predictive"], results["reactive-hpa"]
        ratios = {
            "violation_ratio_vs_reactive_hpa": violation_ratio(points(predictive), points(hpa)),
            "shard_hours_ratio_vs_reactive_hpa": shard_hours_ratio(points(predictive), points(hpa)),
            "scale_events_ratio_vs_reactive_hpa": ratio(
                at_knob(predictive, PREDICTIVE_DEFAULT).scale_events, at_knob(hpa, HPA_REFERENCE).scale_events
            ),
        }
        # JSON has no infinity: a failed ratio is written as null and named in ratio_failures
        body.update({k: (v if math.isfinite(v) else None) for k, v in ratios.items()})
        body["ratio_failures"] = sorted(k for k, v in ratios.items() if not math.isfinite(v))
    return body


def compare_queue(
    workload: Workload,
    config: SimConfig,
    policies: Sequence[str] = POLICIES,
    progress: Callable[[str, float, SimResult], None] | None = None,
    forecasts: ForecastReplay | None = None,
) -> tuple[dict[str, list[SimResult]], dict[str, object]]:
    """Sweep every policy on one queue; returns the runs and the comparison's JSON body."""
    results = sweep(workload, config, policies, progress, forecasts)
    body = report(results)
    if "predictive" in results:
        body["decision"] = dotted_path(DECIDE)  # the function every predictive answer came from
    return results, body
