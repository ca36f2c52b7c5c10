"""The operator's own decision, replayed: `foreshard.core.decision.decide` fed from the trace.

    trace steps completed so far --ForecastReplay (the forecast loop's demand.refresh: refit every
    REFIT_PERIOD cycles, roll forward in between)--> Demand per trace step
    every sync: Gathered(replicas, newest intervals) + the status decide wrote last + the replay's
    clock --decide--> replicas

Nothing here plans: the replicas are whatever `decide` answers, with the same planning target,
stabilization, step limits and mode the reconcile pass applies (reconcile/shardallocation.py calls
the same function object, `DECIDE`; a unit test checks the identity). The replay stands in for
the API server and for Prometheus:

* history: the queue's total per `spec.forecast.step` (default 5 m, the CRD's: the replayed
  broker's counter as Prometheus would report it, from the simulator's arrivals, which spread a
  trace step's count uniformly), only intervals complete at the sync's time, at most
  `lookback_s` of them, as the forecast loop reads them;
* forecast: one series (the queue total; the forecast loop also forecasts the heaviest keys and
  the tail and sums them, which the total of a trace cannot reproduce), one forecast cycle per new
  interval (the operator's cycles between two Prometheus intervals see the same data and reuse
  the forecast), refitted when `fleet.due_for_refit` names it;
* status: the previous decision's `status.plan`, as the next pass would read it.

The forecasts do not depend on the knob, so one `ForecastReplay` serves a whole sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from foreshard.api.shardallocation import ForecastSettings, QueueSpec, ScalingPolicy, ShardTemplate
from foreshard.core import decision, demand
from foreshard.core.forecasting import InsufficientHistory, fleet
from foreshard.core.planning.target import shards_for_rate
from foreshard.core.series import Series
from foreshard.core.simulation.policies import Observation
from foreshard.core.simulation.workload import Workload

DECIDE = decision.decide  # the reconcile pass's decision function; nothing else plans in a replay
TOTAL = "__total__"
RECENT_STEPS = 12  # newest intervals handed to decide, as the forecast loop publishes them


FRUGAL_QUANTILES = {1.25: 0.75, 1.5: 0.5}  # knobs above 1: headroom 0 and this planning quantile


def dotted_path(function: Any) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def knob_settings(knob: float, quantile: float) -> tuple[float, float]:
    """(spec.scaling.headroom, spec.forecast.planningQuantile) for a planning utilisation `knob`;
    every pair is one the CRD accepts (headroom 0..1, quantile 0.5..0.999)."""
    if knob <= 1.0:
        return 1.0 / knob - 1.0, quantile
    if knob not in FRUGAL_QUANTILES:
        raise ValueError(f"knobs above 1 are {sorted(FRUGAL_QUANTILES)}; got {knob:g}")
    return 0.0, FRUGAL_QUANTILES[knob]


@dataclass(frozen=True)
class ReplaySettings:
    """The queue spec a replay runs under (the CRD's fields; the knob sets `headroom`)."""

    step_s: float = 300.0
    lookback_s: float = 7 * 86_400.0
    long_horizon_s: float = 3 * 3600.0
    # scale out once the next 10 minutes need it, then for the peak of the next 3 hours
    short_horizon_s: float | None = 600.0
    planning_quantile: float = 0.9
    stabilization_s: float = 300.0
    max_step_up: int | None = None
    max_step_down: int | None = None
    min_shards: int = 1
    max_shards: int = 100_000

    def spec(self, workload: Workload, capacity: float, lead_s: float, knob: float) -> QueueSpec:
        headroom, quantile = knob_settings(knob, self.planning_quantile)
        return QueueSpec(
            name=workload.name,
            namespace="replay",
            min_shards=self.min_shards,
            max_shards=self.max_shards,
            slots=1024,
            template=ShardTemplate(),
            forecast=ForecastSettings(
                prometheus_url="replay",  # forecasting on; the replay is the data source
                lookback_s=self.lookback_s,
                step_s=self.step_s,
                long_horizon_s=self.long_horizon_s,
                planning_quantile=quantile,
                short_horizon_s=self.short_horizon_s,
            ),
            scaling=ScalingPolicy(
                mode="Auto",
                lead_s=lead_s,
                headroom=headroom,
                stabilization_s=self.stabilization_s,
                max_step_up=self.max_step_up,
                max_step_down=self.max_step_down,
            ),
            messages_per_second=capacity,
        )


class ForecastReplay:
    """The forecast loop over a trace: the demand published after each completed trace step.

    Demand k is what the loop publishes once intervals 0..k-1 are in Prometheus; it is computed
    in order (the fit state carries from one cycle to the next) and kept, so every knob of a sweep
    reads the same forecasts.
    """

    def __init__(self, workload: Workload, settings: ReplaySettings) -> None:
        self.workload, self.settings = workload, settings
        self.step_s = settings.step_s
        per = round(settings.step_s / workload.step_s)
        if per < 1 or abs(per * workload.step_s - settings.step_s) > 1e-9:
            raise ValueError(
                f"the forecast step {settings.step_s:g}s must be a multiple of {workload.step_s:g}s"
            )
        self.substeps = per
        padded = np.pad(workload.arrivals, (0, -len(workload.arrivals) % per))
        self.counts = padded.reshape(-1, per).sum(axis=1)  # what Prometheus reports per interval
        # every quantile a knob plans on, so one replay serves the whole grid
        self.quantiles = tuple(sorted({settings.planning_quantile, *FRUGAL_QUANTILES.values()}))
        self._lookback = max(1, round(settings.lookback_s / settings.step_s))
        self._demands: list[demand.Demand | str] = []  # str: why there is none (InsufficientHistory)
        self._state: demand.FitState | None = None
        self.fits = 0

    def history(self, completed: int) -> Series:
        """The queue total over the lookback, ending with interval `completed` - 1."""
        first = max(0, completed - self._lookback)
        start = self.workload.start_s + first * self.step_s
        return Series(TOTAL, start, self.step_s, self.counts[first:completed])

    def completed(self, now_s: float) -> int:
        """Intervals complete at `now_s`."""
        return min(int((now_s - self.workload.start_s) // self.step_s), len(self.counts))

    def published(self, completed: int) -> demand.Demand:
        """The published demand with `completed` trace steps known; raises InsufficientHistory."""
        while len(self._demands) <= completed:
            self._demands.append(self._cycle(len(self._demands)))
        found = self._demands[completed]
        if isinstance(found, str):
            raise InsufficientHistory(found)
        return found

    def _cycle(self, completed: int) -> demand.Demand | str:
        history = self.history(completed)
        if not len(history):
            return "no interval of the trace has completed yet"
        # planned on until the next interval completes, as the loop covers FRESH_FOR_S
        ahead = history.end_s + history.step_s
        steps = demand.horizon_steps(history.end_s, ahead, self.settings.long_horizon_s, history.step_s)
        refit = len(fleet.due_for_refit(1, completed, demand.REFIT_PERIOD)) > 0
        before = self._state
        try:
            # the fast family only: the loop's statsmodels candidates cost a second per refit
            self._state = demand.refresh(
                before, history, steps, refit, self.quantiles, now_s=history.end_s, statistical=False
            )
        except InsufficientHistory as error:
            self._state = None
            return str(error)
        self.fits += self._state is not before
        assert self._state.forecast is not None  # refresh always leaves one
        rate = demand.latest_rate([history])
        found = demand.combine([self._state.forecast], self.settings.planning_quantile, rate, 1)
        # combine keeps the one quantile it is asked for; of one series the sum is the series
        # itself, so every path forecast stays (each knob plans on its own quantile)
        paths = dict(self._state.forecast.quantiles)
        return replace(found, forecast=replace(found.forecast, quantiles=paths))


class OperatorPlanner:
    """A simulator policy whose every answer is `DECIDE`'s. Knob: the planning utilisation
    (`knob_settings` turns it into the spec's headroom and planning quantile)."""

    name = "predictive"

    def __init__(
        self, forecasts: ForecastReplay, capacity: float, lead_s: float, knob: float, step_s: float
    ) -> None:
        self.knob = knob
        self.decide_function = DECIDE
        workload = forecasts.workload
        self._forecasts, self._workload, self._step_s = forecasts, workload, step_s
        self._substeps = forecasts.substeps
        self.spec = forecasts.settings.spec(workload, capacity, lead_s, knob)
        self._capacity, self._headroom = capacity, self.spec.scaling.headroom
        self._previous: dict[str, Any] = {}
        self.last: decision.Decision | None = None

    def initial_replicas(self, rate: float) -> int:
        """As if the queue had been running at the first rate with the spec's headroom."""
        return shards_for_rate(rate, self._capacity, 1.0 / (1.0 + self._headroom))

    def _now(self, step: int) -> float:
        return self._workload.start_s + (step + 1) * self._step_s  # the end of the sync's step

    def _estimate(
        self, history: Mapping[str, Series], now_s: float, horizon_s: float, quantile: float
    ) -> demand.Demand:
        return self._forecasts.published(self._forecasts.completed(now_s))

    def decide(self, step: int, obs: Observation) -> int:
        now_s = self._now(step)
        recent = self._forecasts.history(self._forecasts.completed(now_s)).tail(RECENT_STEPS)
        gathered = decision.Gathered(obs.replicas, {TOTAL: recent} if len(recent) else {})
        self.last = self.decide_function(self.spec, gathered, self._previous, now_s, self._estimate)
        self._previous = {"plan": self.last.plan} if self.last.plan is not None else {}
        return self.last.replicas

    def quiet(self, step: int, obs: Observation, last: int) -> int:
        """Up to the step before new data arrives (the last sync of an interval sees it complete)
        or before `decision.steady_until`, whichever comes first."""
        data_at = (step // self._substeps + 1) * self._substeps - 1
        steady = decision.steady_until(self.spec, self._previous, self._now(step), self._workload.start_s)
        before_change = math.ceil((steady - self._workload.start_s) / self._step_s - 1 - 1e-9) - 1
        return max(step, min(last, data_at - 1, before_change))
