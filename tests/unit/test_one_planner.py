"""One planner: `foreshard simulate` replays traces through the reconcile pass's own decision
function, fed by a replay of the forecast loop (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from foreshard.cli import main
from foreshard.core import decision, demand
from foreshard.core.forecasting import InsufficientHistory
from foreshard.core.series import Series
from foreshard.core.simulation import planner
from foreshard.core.simulation.compare import PREDICTIVE_DEFAULT, make_policy
from foreshard.core.simulation.engine import SimConfig
from foreshard.core.simulation.planner import ForecastReplay, OperatorPlanner, ReplaySettings
from foreshard.core.simulation.policies import Observation
from foreshard.core.simulation.workload import workload_from_series
from foreshard.reconcile import shardallocation
from foreshard.traces import write_series

pytestmark = pytest.mark.unit

DAY = 86_400.0


def daily_ramp(days: int = 2, step: float = 1800.0) -> Series:
    per_day = round(DAY / step)
    hours = (np.arange(days * per_day) % per_day) * step / 3600.0
    return Series("ramp", 0.0, step, np.where((hours >= 8) & (hours < 20), 40.0, 4.0) * step)


def test_the_simulator_calls_the_object_the_reconcile_pass_calls() -> None:
    workload = workload_from_series("q", [daily_ramp()])
    policy = make_policy("predictive", PREDICTIVE_DEFAULT, workload, SimConfig(10.0))
    assert isinstance(policy, OperatorPlanner)
    assert policy.decide_function is shardallocation.DECIDE
    assert planner.DECIDE is shardallocation.DECIDE is decision.decide
    # and the pass really calls it by that name, not some other function
    assert "DECIDE" in shardallocation.reconcile.__code__.co_names
    assert planner.dotted_path(shardallocation.DECIDE) == "foreshard.core.decision.decide"


def test_every_replayed_answer_is_the_reconcile_passes_decision_on_the_replayed_facts() -> None:
    workload = workload_from_series("q", [daily_ramp()])
    forecasts = ForecastReplay(workload, ReplaySettings())
    policy = OperatorPlanner(forecasts, 10.0, 120.0, PREDICTIVE_DEFAULT, workload.step_s)
    replicas = 2
    for step in range(0, len(workload.arrivals), 37):  # across the first day and past it
        previous = {"plan": policy.last.plan} if policy.last is not None and policy.last.plan else {}
        answer = policy.decide(step, Observation(replicas, replicas, 0.0, 0.0, 0.0))
        now_s = workload.start_s + (step + 1) * workload.step_s
        completed = int(now_s // forecasts.step_s)
        recent = forecasts.history(completed).tail(planner.RECENT_STEPS)
        gathered = decision.Gathered(replicas, {planner.TOTAL: recent} if len(recent) else {})

        def published(*_: object, completed: int = completed) -> demand.Demand:
            return forecasts.published(completed)

        expected = shardallocation.DECIDE(policy.spec, gathered, previous, now_s, published)
        assert policy.last == expected and answer == expected.replicas
        replicas = answer
    assert policy.last is not None and policy.last.forecasting.reason == "ForecastReady"


def test_the_replayed_forecast_loop_refits_on_its_schedule_and_rolls_forward_between() -> None:
    workload = workload_from_series("q", [daily_ramp()])
    forecasts = ForecastReplay(workload, ReplaySettings())
    cycles = len(forecasts.counts) + 1
    forecasts.published(cycles - 1)
    # cycle 0 has no data; from the first interval on, a refit every REFIT_PERIOD cycles
    assert forecasts.fits == len(range(demand.REFIT_PERIOD, cycles, demand.REFIT_PERIOD)) + 1
    # between refits new data still moves the forecast (rolled forward, not frozen at the fit)
    first, later = (
        forecasts.published(demand.REFIT_PERIOD * 2 + 1),
        forecasts.published(demand.REFIT_PERIOD * 2 + 5),
    )
    assert later.forecast.start_s - first.forecast.start_s == 4 * forecasts.step_s
    with pytest.raises(InsufficientHistory):
        forecasts.published(0)


@pytest.mark.parametrize("how", [["--policy", "predictive"], ["--compare"]])
def test_simulate_json_names_the_decision_function_it_replayed(
    how: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_series(daily_ramp(days=1), tmp_path / "q" / "ramp.csv")
    assert main(["simulate", "--traces", str(tmp_path / "q"), *how, "--capacity", "10", "--json"]) == 0
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert body["decision"] == planner.dotted_path(shardallocation.DECIDE) == "foreshard.core.decision.decide"
    assert body["policies"]["predictive"][0]["shard_hours"] > 0
