"""The simulator: HPA arithmetic, replay, SLO age, the operator's decision replayed, the fair
comparison and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from foreshard.cli import main
from foreshard.core.series import Series
from foreshard.core.simulation.compare import (
    FAILED,
    HPA_REFERENCE,
    PREDICTIVE_DEFAULT,
    Point,
    make_policy,
    shard_hours_for,
    violation_ratio,
    violations_at,
)
from foreshard.core.simulation.engine import (
    SimConfig,
    SimResult,
    Trajectory,
    balanced_moves,
    oldest_age,
    simulate,
)
from foreshard.core.simulation.hpa import Behavior, Hpa, Stabilizer, raw_desired, scale_up_limit
from foreshard.core.simulation.planner import ForecastReplay, ReplaySettings
from foreshard.core.simulation.policies import Observation, Policy, ReactiveHpa, StaticPeak
from foreshard.core.simulation.workload import workload_from_series
from foreshard.traces import write_series

pytestmark = pytest.mark.unit

DAY = 86_400.0


def daily_ramp(days: int = 4, step: float = 1800.0) -> Series:
    """A quiet night and a sharp morning ramp, every day the same."""
    per_day = round(DAY / step)
    hours = (np.arange(days * per_day) % per_day) * step / 3600.0
    rate = np.where((hours >= 8) & (hours < 20), 40.0, 4.0)
    return Series("ramp", 0.0, step, rate * step)


@pytest.mark.parametrize(
    ("current", "ratio", "expected"),
    [(10, 1.05, 10), (10, 0.95, 10), (10, 1.2, 12), (10, 0.5, 5), (3, 2.0000000001, 6)],
)
def test_the_hpa_formula_keeps_replicas_inside_the_tolerance_band(current, ratio, expected) -> None:
    assert raw_desired(current, ratio) == expected


def test_the_default_scale_up_policy_allows_double_or_four_more_pods() -> None:
    assert scale_up_limit(1, Behavior()) == 5
    assert scale_up_limit(10, Behavior()) == 20


def test_scale_down_waits_for_the_highest_recommendation_of_the_window_to_expire() -> None:
    hpa = Hpa(Behavior(scale_down_stabilization_s=60.0))  # four syncs
    replicas = [hpa.next_replicas(step, 10, desired) for step, desired in enumerate([10, 4, 4, 4, 4])]
    assert replicas == [10, 10, 10, 10, 4]


def test_the_stabilizer_answers_the_maximum_of_its_window() -> None:
    stabilizer = Stabilizer(3)
    assert [stabilizer.push(i, v) for i, v in enumerate([5, 1, 2, 1, 1, 7])] == [5, 5, 5, 2, 2, 7]


@pytest.mark.parametrize(
    ("before", "after", "moves"), [(4, 4, 0), (4, 8, 4), (8, 4, 4), (1, 2, 4), (3, 4, 2)]
)
def test_balanced_moves_count_only_the_slots_that_change_owner(before, after, moves) -> None:
    assert balanced_moves(8, before, after) == moves


def test_counts_are_spread_uniformly_over_the_trace_step() -> None:
    workload = workload_from_series("q", [Series("a", 0.0, 60.0, np.array([60.0, 0.0]))])
    assert workload.arrivals.tolist() == [15.0, 15.0, 15.0, 15.0, 0.0, 0.0, 0.0, 0.0]
    assert workload.default_capacity() == pytest.approx(np.quantile([1.0, 0.0], 0.99) / 16)


def test_keys_of_one_queue_start_together_and_must_share_a_step() -> None:
    a, b = Series("a", 0.0, 60.0, np.ones(3)), Series("b", 999.0, 60.0, np.ones(2))
    assert workload_from_series("q", [a, b]).trace_counts.tolist() == [2.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="share a step"):
        workload_from_series("q", [a, Series("c", 0.0, 30.0, np.ones(2))])


def test_the_oldest_message_ages_while_capacity_falls_short() -> None:
    arrivals = np.array([10.0, 10.0, 0.0, 0.0])
    served = np.array([5.0, 5.0, 5.0, 5.0])
    backlog = np.array([5.0, 10.0, 5.0, 0.0])
    ages = oldest_age(Trajectory(arrivals, served, backlog, np.ones(4), np.ones(4)), 10.0)
    # after step 0, half of step 0's arrivals wait: the oldest came at t=5 and is 5 s old at t=10
    assert ages.tolist() == pytest.approx([5.0, 10.0, 15.0, 0.0])


def test_enough_static_capacity_never_violates_and_costs_its_shard_hours() -> None:
    workload = workload_from_series("q", [daily_ramp(days=1)])
    policy = StaticPeak(capacity=10.0, knob=1.0, trace_rates=workload.trace_rates())
    result = simulate(workload, policy, SimConfig(10.0))
    assert result.slo_violation_minutes == 0
    assert result.shard_hours == pytest.approx(4 * 24)
    assert result.scale_events == 0


def test_a_ramp_above_capacity_violates_until_new_pods_are_ready() -> None:
    workload = workload_from_series("q", [daily_ramp(days=1)])
    slow = simulate(workload, ReactiveHpa(10.0, 0.9), SimConfig(10.0, lead_s=600.0))
    fast = simulate(workload, ReactiveHpa(10.0, 0.9), SimConfig(10.0, lead_s=15.0))
    assert slow.slo_violation_minutes > fast.slo_violation_minutes > 0
    assert slow.scale_events >= 2
    assert slow.trajectory.ready.max() >= 4


def test_monotone_interpolation_reads_a_curve_inside_and_clamps_outside() -> None:
    curve = [Point(1.0, 10.0, 100.0), Point(2.0, 20.0, 40.0), Point(3.0, 30.0, 50.0)]
    assert violations_at(curve, 15.0) == pytest.approx(70.0)
    assert violations_at(curve, 30.0) == pytest.approx(40.0)  # running minimum: more shards never worse
    assert violations_at(curve, 5.0) == 100.0
    assert shard_hours_for(curve, 70.0) == pytest.approx(15.0)
    assert shard_hours_for(curve, 1.0) == 30.0
    assert shard_hours_for(curve, 500.0) == 10.0


def test_a_zero_denominator_counts_as_zero_only_when_the_numerator_is_zero() -> None:
    hpa = [Point(0.7, 10.0, 0.0)]
    assert violation_ratio([Point(1.0, 10.0, 0.0)], hpa) == 0.0
    assert violation_ratio([Point(1.0, 10.0, 3.0)], hpa) == FAILED


def test_the_operators_decision_serves_a_learnt_ramp_on_time_with_fewer_scale_events() -> None:
    workload = workload_from_series("q", [daily_ramp(days=6, step=3600.0)])
    config = SimConfig(10.0, lead_s=300.0)
    forecasts = ForecastReplay(workload, ReplaySettings(step_s=3600.0))
    ours = simulate(
        workload, make_policy("predictive", PREDICTIVE_DEFAULT, workload, config, forecasts), config
    )
    hpa = simulate(workload, ReactiveHpa(10.0, HPA_REFERENCE), config)
    last_days = slice(-2 * round(DAY / workload.step_s), None)  # once the forecast has learnt the ramp

    def late(run: SimResult) -> int:
        return int((oldest_age(run.trajectory, workload.step_s)[last_days] > config.slo_s).sum())

    def cost(run: SimResult) -> float:
        return float(run.trajectory.replicas[last_days].sum())

    def events(run: SimResult) -> int:
        return int(np.count_nonzero(np.diff(run.trajectory.replicas[last_days])))

    assert late(ours) == 0 < late(hpa)
    assert events(ours) <= events(hpa) / 2
    assert cost(ours) < 1.5 * cost(hpa)


def test_simulate_compare_prints_one_json_object_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_series(daily_ramp(days=2), tmp_path / "q" / "ramp.csv")
    assert (
        main(["simulate", "--traces", str(tmp_path / "q"), "--compare", "--lead-time", "2m", "--json"]) == 0
    )
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(body["policies"]) == {"predictive", "reactive-hpa", "keda-lag", "static-peak"}
    assert {"knob", "slo_violation_minutes", "shard_hours", "scale_events", "moves"} <= set(
        body["policies"]["keda-lag"][0]
    )
    assert body["lead_s"] == 120.0
    assert "scale_events_ratio_vs_reactive_hpa" in body


def test_simulate_one_policy_with_a_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(daily_ramp(days=1), tmp_path / "q" / "ramp.csv")
    out = tmp_path / "run.png"
    code = main(
        [
            "simulate",
            "--traces",
            str(tmp_path / "q"),
            "--policy",
            "reactive-hpa",
            "--capacity",
            "5",
            "--slo",
            "45s",
            "--json",
            "--plot",
            str(out),
        ]
    )
    assert code == 0 and out.stat().st_size > 0
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert body["capacity"] == 5.0 and body["slo_s"] == 45.0
    assert list(body["policies"]) == ["reactive-hpa"]


class NeverQuiet:
    """Delegates to a policy but never vouches for a quiet stretch: the step-by-step reference."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.name, self.knob = policy, policy.name, policy.knob

    def initial_replicas(self, rate: float) -> int:
        return self.policy.initial_replicas(rate)

    def decide(self, step: int, obs: Observation) -> int:
        return self.policy.decide(step, obs)

    def quiet(self, step: int, obs: Observation, last: int) -> int:
        return step


@pytest.mark.parametrize("name", ["predictive", "reactive-hpa", "keda-lag", "static-peak"])
def test_skipping_quiet_stretches_gives_the_same_replay_as_every_step(name: str) -> None:
    workload = workload_from_series("q", [daily_ramp(days=2, step=300.0)])
    config = SimConfig(10.0, lead_s=120.0)
    forecasts = ForecastReplay(workload, ReplaySettings(stabilization_s=600.0))
    knob = PREDICTIVE_DEFAULT if name == "predictive" else 0.8
    fast = simulate(workload, make_policy(name, knob, workload, config, forecasts), config)
    slow = simulate(workload, NeverQuiet(make_policy(name, knob, workload, config, forecasts)), config)
    assert fast.summary() == slow.summary()
    assert np.array_equal(fast.trajectory.replicas, slow.trajectory.replicas)
    assert np.array_equal(fast.trajectory.served, slow.trajectory.served)
