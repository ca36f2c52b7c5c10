"""Scaling policies the simulator compares: each answers the replicas to run, once per sync.

* `reactive-hpa`: the HPA on utilisation (served messages/s over ready-or-starting capacity),
  the way a CPU-based HPA sees a consumer pool: unready pods count with zero usage.
* `keda-lag`: a KEDA-style scaler on backlog; KEDA drives an HPA with an `AverageValue` target,
  so the metric is the lag (backlog plus the last sync's arrivals, as a consumer that commits
  every sync reports it) divided by a per-replica lag threshold.
* `static-peak`: a fixed count sized for a quantile of the whole trace's rate (it sees the future).
* `predictive`: Foreshard's planner; see `PredictivePolicy`.

Every policy has one aggressiveness knob, swept over a fixed grid by `compare`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from foreshard.core.planning.target import shards_for_rate
from foreshard.core.series import FloatArray
from foreshard.core.simulation.hpa import SYNC_S, TOLERANCE, Behavior, Hpa, Stabilizer, raw_desired

DEFAULT_BEHAVIOR = Behavior()


@dataclass(slots=True)
class Observation:
    """What a policy may read at one sync: broker metrics and the StatefulSet's state."""

    replicas: int  # requested (ready or starting)
    ready: int
    arrival_rate: float  # messages/s published during the last sync
    served_rate: float  # messages/s consumed during the last sync
    backlog: float  # messages waiting


class Policy(Protocol):
    name: str
    knob: float

    def initial_replicas(self, rate: float) -> int: ...

    def decide(self, step: int, obs: Observation) -> int: ...


class ReactiveHpa:
    name = "reactive-hpa"

    def __init__(
        self, capacity: float, target_utilization: float, behavior: Behavior = DEFAULT_BEHAVIOR
    ) -> None:
        self.knob = target_utilization
        self._capacity = capacity
        self._hpa = Hpa(behavior)

    def initial_replicas(self, rate: float) -> int:
        return shards_for_rate(rate, self._capacity, self.knob)

    def decide(self, step: int, obs: Observation) -> int:
        utilization = obs.served_rate / (max(obs.replicas, 1) * self._capacity)
        desired = raw_desired(obs.replicas, utilization / self.knob, self._hpa.behavior.tolerance)
        return self._hpa.next_replicas(step, obs.replicas, desired)


class KedaLag:
    """Lag threshold per replica = knob * capacity * one sync: the lag a pod at `knob` load shows."""

    name = "keda-lag"

    def __init__(self, capacity: float, knob: float, behavior: Behavior = DEFAULT_BEHAVIOR) -> None:
        self.knob = knob
        self._capacity = capacity
        self._threshold = knob * capacity * SYNC_S
        self._hpa = Hpa(behavior)

    def initial_replicas(self, rate: float) -> int:
        return shards_for_rate(rate, self._capacity, self.knob)

    def decide(self, step: int, obs: Observation) -> int:
        lag = obs.backlog + obs.arrival_rate * SYNC_S
        ratio = lag / (max(obs.replicas, 1) * self._threshold)
        desired = raw_desired(obs.replicas, ratio, self._hpa.behavior.tolerance)
        return self._hpa.next_replicas(step, obs.replicas, desired)


class StaticPeak:
    """Knob: the quantile of the trace's rate the fixed count is sized for (1.0 = the peak)."""

    name = "static-peak"

    def __init__(self, capacity: float, knob: float, trace_rates: FloatArray) -> None:
        self.knob = knob
        self._replicas = shards_for_rate(float(np.quantile(trace_rates, knob)), capacity, 1.0)

    def initial_replicas(self, rate: float) -> int:
        return self._replicas

    def decide(self, step: int, obs: Observation) -> int:
        return self._replicas


@dataclass(frozen=True)
class Envelope:
    """Forecast rates (messages/s) a policy plans for, per simulator step; NaN = no trusted forecast.

    `due[t]`: the planning quantile at t + lead (what pods requested now must serve: the trigger);
    `ahead[t]`: its peak over [t + lead, t + horizon] (the size of a scale-out, so that one step
    covers the whole ramp); `hold[t]`: its peak over [t, t + horizon] (what must not be removed,
    because removal is immediate and return takes a lead time).
    """

    due: FloatArray
    ahead: FloatArray
    hold: FloatArray

    @staticmethod
    def none(steps: int) -> Envelope:
        empty = np.full(steps, np.nan)
        return Envelope(empty, empty, empty)


@dataclass(frozen=True)
class PredictiveSettings:
    drain_s: float = 30.0  # backlog the reactive path plans to drain within this time
    down_band: float = 0.4  # scale in only when it frees at least this share of the shards
    up_extra: float = 0.25  # fraction added to a reactive scale-up so bursts take fewer steps
    stabilization_s: float = 900.0  # scale-in waits for this long a window of lower plans
    min_replicas: int = 1

    def relaxed(self, factor: float) -> PredictiveSettings:
        """Frugal settings for a knob above 1: slower drain, shorter memory, no overshoot."""
        return PredictiveSettings(
            drain_s=self.drain_s * factor * factor,
            down_band=self.down_band / factor,
            up_extra=self.up_extra / factor,
            stabilization_s=max(self.stabilization_s / factor, SYNC_S),
            min_replicas=self.min_replicas,
        )


class PredictivePolicy:
    """Hybrid: the forecast sets a floor ahead of predictable ramps; a reactive path answers bursts.

    The reactive path sizes for the published rate plus the backlog drained within `drain_s`
    (the broker reports both; it needs no utilisation proxy). Scale-in waits for a stabilization
    window and for the forecast to agree (the `hold` envelope), and only acts when it frees a
    band of shards, which keeps scale events rare.

    Knob (aggressiveness): up to 1 it is the planning utilisation (headroom = 1/knob - 1); above
    1 the reactive path keeps no headroom and trades SLO for shards by draining backlog more
    slowly (`PredictiveSettings.relaxed`), and the forecast floor covers only 1/knob of the
    forecast. The reactive path never plans below the published rate, which would flap.
    """

    name = "predictive"

    def __init__(
        self,
        capacity: float,
        knob: float,
        envelope: Envelope,
        lead_s: float,
        settings: PredictiveSettings | None = None,
    ) -> None:
        self.knob = knob
        self._lead_s = lead_s
        self._capacity = capacity
        self._utilization = min(knob, 1.0)
        self._envelope = envelope
        settings = settings or PredictiveSettings()
        self._settings = settings.relaxed(knob) if knob > 1.0 else settings
        self._stabilizer = Stabilizer(round(self._settings.stabilization_s / SYNC_S))

    def initial_replicas(self, rate: float) -> int:
        return shards_for_rate(rate, self._capacity, self._utilization)

    def _floor(self, values: FloatArray, step: int) -> int:
        value = float(values[min(step, len(values) - 1)])
        return 0 if math.isnan(value) else shards_for_rate(value, self._capacity, self.knob)

    def _reactive(self, obs: Observation) -> int:
        """Shards for the published rate plus the backlog drained once new pods could serve.

        Inside the HPA's tolerance band around the running capacity it keeps the replicas, so
        the backlog of one slot pause does not buy a shard.
        """
        need = max(obs.arrival_rate, obs.served_rate) + obs.backlog / (self._settings.drain_s + self._lead_s)
        running = obs.replicas * self._capacity * self._utilization
        if running * (1.0 - 2 * TOLERANCE) <= need <= running * (1.0 + TOLERANCE):
            return obs.replicas
        return shards_for_rate(need, self._capacity, self._utilization)

    def decide(self, step: int, obs: Observation) -> int:
        reactive = self._reactive(obs)
        keep = self._stabilizer.push(step, max(reactive, self._floor(self._envelope.hold, step)))
        if reactive > obs.replicas:  # overshoot a burst so that its growth takes fewer steps
            reactive = math.ceil(reactive * (1.0 + self._settings.up_extra))
        if max(reactive, self._floor(self._envelope.due, step)) > obs.replicas:
            return max(reactive, self._floor(self._envelope.ahead, step))
        if keep <= obs.replicas * (1.0 - self._settings.down_band):
            return max(keep, self._settings.min_replicas)
        return obs.replicas
