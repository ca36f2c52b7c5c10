"""One planning decision: target shards, placement on them, the move schedule, and why.

    forecast + observed load --target--> shards
    slots + pins + current owners --place(on the shards that will exist)--> moves
    moves --schedule--> waves before the ramp; scale-in lowers replicas only after the drain

Pure and deterministic: same inputs, same plan, sorted outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from foreshard.core.forecasting.types import Forecast
from foreshard.core.planning.moves import MovePolicy, Schedule, schedule_moves
from foreshard.core.planning.placement import IntArray, Placement, place
from foreshard.core.planning.target import TargetDecision, TargetPolicy, plan_target
from foreshard.core.series import FloatArray

DEFAULT_MOVES = MovePolicy()


@dataclass(frozen=True)
class Observed:
    now_s: float
    replicas: int
    rate: float  # messages/s published now
    slot_load: FloatArray  # planned messages/s per slot (pinned keys excluded)
    slot_owner: IntArray
    pins: Mapping[str, float] = field(default_factory=dict)
    pin_owner: Mapping[str, int] = field(default_factory=dict)
    backlog_bytes: Mapping[str, float] = field(default_factory=dict)
    recent_targets: Sequence[int] = ()


@dataclass(frozen=True)
class Plan:
    target: TargetDecision
    replicas_now: int  # what the StatefulSet should run while the moves happen
    replicas_after_moves: int
    placement: Placement
    schedule: Schedule
    explanation: dict[str, object]


def decide(
    observed: Observed,
    forecast: Forecast | None,
    target_policy: TargetPolicy,
    move_policy: MovePolicy = DEFAULT_MOVES,
    trough_s: float | None = None,
) -> Plan:
    target = plan_target(
        forecast, observed.now_s, observed.replicas, observed.rate, observed.recent_targets, target_policy
    )
    placement = place(
        observed.slot_load,
        observed.pins,
        observed.slot_owner,
        observed.pin_owner,
        target.target,
        target_policy.capacity,
    )
    deadline = target_policy.lead_s if target.reason == "ScaleOut" else None
    schedule = schedule_moves(placement.moves, observed.backlog_bytes, move_policy, deadline, trough_s)
    # scale-in keeps the old replicas until the highest ordinals are drained; scale-out starts pods now
    replicas_now = max(observed.replicas, target.target)
    return Plan(
        target, replicas_now, target.target, placement, schedule, _explain(observed, target, placement)
    )


def _explain(observed: Observed, target: TargetDecision, placement: Placement) -> dict[str, object]:
    return {
        "inputs": {
            "replicas": observed.replicas,
            "rate": round(observed.rate, 3),
            "pins": len(observed.pins),
        },
        "forecastPeak": round(target.forecast_peak, 3),
        "target": target.target,
        "reason": target.reason,
        "why": target.message,
        "moves": len(placement.moves),
        "withinCapacity": placement.within_capacity,
        "unsplittableKeys": list(placement.unsplittable),
    }
