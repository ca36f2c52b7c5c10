"""Target shards, reactive fallback, resource estimation, move schedule and the whole decision."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core.forecasting.types import Forecast
from foreshard.core.planning import (
    LoadSample,
    MovePolicy,
    Observed,
    TargetPolicy,
    decide,
    estimate_capacity,
    plan_target,
    schedule_moves,
    shards_for_rate,
)
from foreshard.core.planning.placement import Move

pytestmark = pytest.mark.unit

POLICY = TargetPolicy(
    capacity=10.0, lead_s=120.0, horizon_s=1800.0, quantile=0.9, headroom=0.25, max_shards=50
)


def forecast(rates: list[float], trusted: bool = True, step: float = 300.0) -> Forecast:
    counts = np.array(rates) * step
    return Forecast("q", 0.0, step, counts * 0.8, {0.9: counts}, "test", trusted)


@pytest.mark.parametrize(
    ("rate", "capacity", "utilization", "expected"),
    [(0.0, 10.0, 0.8, 1), (80.0, 10.0, 0.8, 10), (80.0001, 10.0, 0.8, 11), (30.0, 10.0, 1.0, 3)],
)
def test_shards_for_rate_loads_each_shard_to_at_most_the_utilization(
    rate, capacity, utilization, expected
) -> None:
    assert shards_for_rate(rate, capacity, utilization) == expected


def test_a_forecast_ramp_scales_out_before_the_load_arrives() -> None:
    decision = plan_target(forecast([10, 10, 80, 80, 80, 10]), 0.0, 2, 10.0, [], POLICY)
    assert decision.reason == "ScaleOut"
    assert decision.target == 10  # 80 msg/s at 10 msg/s per shard with 25 % headroom
    assert "80.0 msg/s" in decision.message


def test_a_short_horizon_scales_out_only_for_what_comes_within_it_and_the_long_one_guards_scale_in() -> None:
    from dataclasses import replace

    short = replace(POLICY, short_horizon_s=600.0)
    later_peak = forecast([10, 10, 10, 80, 80, 10])  # the peak starts 15 minutes out
    assert plan_target(later_peak, 0.0, 2, 10.0, [], POLICY).target == 10
    assert plan_target(later_peak, 0.0, 2, 10.0, [], short).reason == "Hold"
    # at 10 shards, the same long-horizon peak still refuses scale-in
    assert plan_target(later_peak, 0.0, 10, 10.0, [], short).target == 10
    soon = forecast([10, 80, 80, 10, 10, 10])
    assert plan_target(soon, 0.0, 2, 10.0, [], short).target == 10


def test_scale_in_waits_until_the_stabilization_window_agrees() -> None:
    quiet = forecast([10] * 8)
    held = plan_target(quiet, 0.0, 10, 10.0, [10, 9], POLICY)
    assert (held.reason, held.target) == ("Hold", 10)
    released = plan_target(quiet, 0.0, 10, 10.0, [2, 2], POLICY)
    assert (released.reason, released.target) == ("ScaleIn", 2)


def test_scale_in_is_refused_while_the_forecast_still_sees_load_within_the_horizon() -> None:
    decision = plan_target(forecast([80, 10, 10, 10]), 0.0, 10, 10.0, [], POLICY)
    assert decision.target == 10


def test_an_untrusted_forecast_falls_back_to_reactive_sizing_and_says_so() -> None:
    decision = plan_target(forecast([500] * 6, trusted=False), 0.0, 3, 40.0, [], POLICY)
    assert decision.reason == "ReactiveFallback"
    assert decision.target == 5
    assert "not trusted" in decision.message


def test_capacity_comes_from_the_measured_cost_per_message() -> None:
    samples = [LoadSample(100.0, 1e5, 0.1), LoadSample(200.0, 2e5, 0.2)]
    capacity = estimate_capacity(samples, cpu_limit_cores=1.0, disk_bytes_per_s=1e9, utilization=0.8)
    assert capacity.cpu_seconds_per_message == pytest.approx(0.001)
    assert capacity.messages_per_s == pytest.approx(800.0)
    assert capacity.basis.startswith("CPU")
    by_disk = estimate_capacity(samples, cpu_limit_cores=1.0, disk_bytes_per_s=1e5, utilization=1.0)
    assert by_disk.messages_per_s == pytest.approx(100.0)
    assert by_disk.basis.startswith("disk")


def test_moves_drain_the_highest_ordinals_first_in_bounded_waves() -> None:
    moves = [Move(f"slot/{i}", source, 0, 1.0) for i, source in enumerate([1, 3, 2, 3, 1])]
    schedule = schedule_moves(moves, {}, MovePolicy(max_concurrent=2, bytes_per_s=1e6, pause_s=1.0))
    assert [m.move.source for m in schedule.moves] == [3, 3, 2, 1, 1]
    assert [m.wave for m in schedule.moves] == [0, 0, 1, 1, 2]
    assert schedule.duration_s == pytest.approx(3.0)


def test_moves_start_in_the_trough_only_when_they_still_finish_before_the_ramp() -> None:
    moves = [Move("slot/0", 0, 1, 1.0)]
    policy = MovePolicy(max_concurrent=1, bytes_per_s=100.0, pause_s=0.0)
    too_late = schedule_moves(moves, {"slot/0": 1000.0}, policy, deadline_s=100.0, trough_s=95.0)
    assert too_late.moves[0].start_s == 0.0 and too_late.meets_deadline
    in_trough = schedule_moves(moves, {"slot/0": 1000.0}, policy, deadline_s=100.0, trough_s=50.0)
    assert in_trough.moves[0].start_s == 50.0 and in_trough.duration_s == 60.0


def test_a_scale_in_plan_keeps_replicas_until_the_highest_ordinals_are_drained() -> None:
    observed = Observed(0.0, 4, 10.0, np.ones(8), np.array([0, 1, 2, 3, 0, 1, 2, 3]), recent_targets=[2])
    plan = decide(observed, forecast([10.0] * 8), POLICY)
    assert (plan.replicas_now, plan.replicas_after_moves) == (4, 2)
    assert int(plan.placement.slot_owner.max()) < plan.replicas_after_moves
    assert [m.move.source for m in plan.schedule.moves][:2] == [3, 3]
    assert plan.explanation["reason"] == "ScaleIn"
    assert plan.explanation["moves"] == 4


def test_the_same_inputs_give_the_same_plan() -> None:
    observed = Observed(0.0, 2, 50.0, np.arange(16.0), np.arange(16) % 2, {"hot": 9.0}, {"hot": 1})
    first, second = (
        decide(observed, forecast([60.0] * 8), POLICY),
        decide(observed, forecast([60.0] * 8), POLICY),
    )
    assert first.explanation == second.explanation
    assert np.array_equal(first.placement.slot_owner, second.placement.slot_owner)


def test_a_scale_out_waits_for_the_short_window_then_sizes_for_the_long_horizons_peak() -> None:
    from dataclasses import replace

    short = replace(POLICY, short_horizon_s=600.0)
    ramp = forecast([10, 10, 10, 40, 80, 80, 10])
    assert plan_target(ramp, 0.0, 2, 10.0, [], short).reason == "Hold"  # 40 msg/s is 15 min out
    step = plan_target(ramp, 300.0, 2, 10.0, [], short)  # now within the short window
    assert (step.reason, step.target) == ("ScaleOut", 10)  # one step for the 80 msg/s that follows


def test_a_scale_in_must_free_a_band_of_shards() -> None:
    almost = plan_target(forecast([72] * 8), 0.0, 10, 72.0, [], POLICY)
    assert (almost.reason, almost.target) == ("Hold", 10)  # 9 shards would do: one is not worth a move
    enough = plan_target(forecast([60] * 8), 0.0, 10, 60.0, [], POLICY)
    assert (enough.reason, enough.target) == ("ScaleIn", 8)
