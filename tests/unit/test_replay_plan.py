"""The replay's pure parts: the compressed clock, the plan of history and live counts, the judgement."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core.forecasting import selection
from foreshard.core.series import Series
from foreshard.core.simulation import replay

DAY = 86_400.0


def daily(key: str, days: int, step: float = 300.0, base: float = 100.0) -> Series:
    t = np.arange(round(days * DAY / step)) * step
    return Series(key, 0.0, step, base * (1.5 + np.sin(2 * np.pi * t / DAY)))


def test_a_five_minute_trace_plays_a_day_in_about_ten_minutes_on_whole_second_steps() -> None:
    clock = replay.clock_for(300.0, 144.0)
    assert clock.wall_step_s == 2.0 and clock.scale == 150.0
    assert replay.clock_for(1800.0, 144.0).wall_step_s == 12.0
    assert replay.clock_for(60.0, 8640.0).wall_step_s == 1.0  # never below one second


def test_the_plan_scales_the_replay_peak_and_keeps_every_message_of_the_trace_share() -> None:
    series = [daily("a", 4), daily("b", 4, base=50.0)]
    clock = replay.clock_for(300.0, 144.0)
    plan = replay.plan(series, clock, 2 * DAY, 2 * DAY, DAY / 4, fanout=3, peak_rate=400.0)
    assert plan.keys[:3] == ("a/000", "a/001", "a/002") and len(plan.keys) == 6
    assert plan.steps == 72 and plan.counts.shape == (72, 6)
    assert plan.rates.max() == pytest.approx(400.0, rel=0.02)
    # whole messages that add up to the scaled trace, per key, with no drift
    expected = plan.trace_totals.sum()
    assert float(plan.counts.sum()) == pytest.approx(expected, abs=6)
    assert np.all(plan.counts == np.round(plan.counts)) and np.all(plan.counts >= 0)
    # history: per sub-key, on the wall grid, ending at wall time 0
    assert all(h.end_s == 0.0 and h.step_s == 2.0 and len(h) == 576 for h in plan.history)
    assert plan.trace_start_s == 2 * DAY


def test_a_replay_that_runs_past_the_trace_is_refused() -> None:
    with pytest.raises(ValueError, match="the replay needs"):
        replay.plan([daily("a", 2)], replay.clock_for(300.0, 144.0), DAY, DAY, 2 * DAY, 1, 10.0)


def test_the_forecaster_finds_the_daily_season_on_the_compressed_clock() -> None:
    clock = replay.clock_for(300.0, 144.0)
    # on the wall clock a day is 43,200 two-second steps: two of them is two days of history
    assert selection.seasons_for(clock.wall_step_s) == [43_200, 302_400]
    assert selection.seasons_for(clock.wall_step_s, DAY / clock.scale) == [288, 2016]


def test_ramps_are_new_levels_of_need_not_jitter() -> None:
    need = np.array([2, 2, 3, 2, 3, 3, 4, 5, 4, 5, 2], dtype=float)
    assert replay.ramps(need, memory_steps=3) == [2, 6, 7]


def test_a_ramp_counts_as_met_ahead_only_with_the_shards_ready_at_its_start() -> None:
    series = [daily("a", 4)]
    clock = replay.clock_for(300.0, 144.0)
    plan = replay.plan(series, clock, 2 * DAY, DAY, DAY / 4, fanout=1, peak_rate=500.0)  # rising
    capacity, headroom = 100.0, 0.2
    need = replay.needed_shards(plan.rates, capacity, headroom)
    times = np.arange(plan.steps + 1) * clock.wall_step_s
    ahead = replay.judge(plan, capacity, headroom, 5.0, times, np.append(need, need[-1]) + 0.0)
    late = replay.judge(plan, capacity, headroom, 5.0, times, np.append(need[0], need) + 0.0)
    assert ahead.ramps >= 1 and ahead.ramps_scaled_ahead_fraction == 1.0
    assert late.ramps == ahead.ramps and late.ramps_scaled_ahead == 0
    assert ahead.shard_hours > 0 and ahead.hpa_shard_hours > 0
