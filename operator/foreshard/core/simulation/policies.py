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
import numpy.typing as npt

from foreshard.core.planning.target import shards_for_rate
from foreshard.core.series import FloatArray
from foreshard.core.simulation.hpa import SYNC_S, TOLERANCE, Behavior, Hpa, Stabilizer, raw_desired

DEFAULT_BEHAVIOR = Behavior()
FALLBACK_SHARE = 0.75  # planning utilisation kept while no forecast is trusted (0.8 -> 0.6)
IntArray = npt.NDArray[np.int64]


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

    def quiet(self, step: int, obs: Observation, last: int) -> int:
        """The last step up to `last` through which, seeing `obs` again every step, the policy
        would keep answering `obs.replicas`; it records those steps as if it had seen them."""
        ...


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

    def _desired(self, obs: Observation) -> int:
        utilization = obs.served_rate / (max(obs.replicas, 1) * self._capacity)
        return raw_desired(obs.replicas, utilization / self.knob, self._hpa.behavior.tolerance)

    def decide(self, step: int, obs: Observation) -> int:
        return self._hpa.next_replicas(step, obs.replicas, self._desired(obs))

    def quiet(self, step: int, obs: Observation, last: int) -> int:
        return self._hpa.quiet(step, obs.replicas, self._desired(obs), last)


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

    def _desired(self, obs: Observation) -> int:
        lag = obs.backlog + obs.arrival_rate * SYNC_S
        ratio = lag / (max(obs.replicas, 1) * self._threshold)
        return raw_desired(obs.replicas, ratio, self._hpa.behavior.tolerance)

    def decide(self, step: int, obs: Observation) -> int:
        return self._hpa.next_replicas(step, obs.replicas, self._desired(obs))

    def quiet(self, step: int, obs: Observation, last: int) -> int:
        return self._hpa.quiet(step, obs.replicas, self._desired(obs), last)


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

    def quiet(self, step: int, obs: Observation, last: int) -> int:
        return last


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
        self._due, self._ahead, self._hold = (
            self._floor(envelope.due),
            self._floor(envelope.ahead),
            self._floor(envelope.hold),
        )
        self._trusted = ~np.isnan(envelope.due)
        self._last = len(envelope.due) - 1
        settings = settings or PredictiveSettings()
        self._settings = settings.relaxed(knob) if knob > 1.0 else settings
        self._stabilizer = Stabilizer(round(self._settings.stabilization_s / SYNC_S))

    def initial_replicas(self, rate: float) -> int:
        return shards_for_rate(rate, self._capacity, self._utilization)

    def _floor(self, rates: FloatArray) -> IntArray:
        """Shards per step for a forecast rate array (0 where there is no trusted forecast)."""
        shards = np.ceil(np.round(rates / (self._capacity * self.knob), 9))
        return np.where(np.isnan(shards), 0, np.maximum(shards, 1)).astype(np.int64)

    def _reactive(self, obs: Observation, trusted: bool) -> tuple[int, int]:
        """(scale-out plan, scale-in plan) for the published rate plus the backlog to drain by the
        time new pods could serve.

        Inside the HPA's tolerance band around the planned capacity (capped at the full
        capacity) the scale-out plan keeps the replicas, so the backlog of one slot pause does not
        buy a shard; the scale-in plan keeps the tolerance as spare, so that a scale-in does not
        land back on the edge it just left.
        """
        need = max(obs.arrival_rate, obs.served_rate) + obs.backlog / (self._settings.drain_s + self._lead_s)
        # without a trusted forecast nothing announces a ramp: keep a reactive autoscaler's headroom
        # (frugal knobs above 1 trade that headroom away like the rest)
        fallback = not trusted and self.knob <= 1.0
        utilization = self._utilization * FALLBACK_SHARE if fallback else self._utilization
        running = obs.replicas * self._capacity * utilization
        # the band never tolerates more than the shards' full capacity: that backlog only grows
        ceiling = min(running * (1.0 + TOLERANCE), obs.replicas * self._capacity)
        inside = running * (1.0 - 2 * TOLERANCE) <= need <= ceiling
        up = obs.replicas if inside else shards_for_rate(need, self._capacity, utilization)
        down = shards_for_rate(need * (1.0 + TOLERANCE), self._capacity, utilization)
        return up, max(down, up) if up > obs.replicas else min(down, obs.replicas)

    def decide(self, step: int, obs: Observation) -> int:
        at = min(step, self._last)
        reactive, lowest = self._reactive(obs, bool(self._trusted[at]))
        keep = self._stabilizer.push(step, max(lowest, int(self._hold[at])))
        if reactive > obs.replicas:  # overshoot a burst so that its growth takes fewer steps
            reactive = math.ceil(reactive * (1.0 + self._settings.up_extra))
        if max(reactive, int(self._due[at])) > obs.replicas:
            return max(reactive, int(self._ahead[at]))
        if keep <= obs.replicas * (1.0 - self._settings.down_band):
            return max(keep, self._settings.min_replicas)
        return obs.replicas

    def quiet(self, step: int, obs: Observation, last: int) -> int:
        trusted = self._trusted[min(step, self._last)]
        reactive, lowest = self._reactive(obs, bool(trusted))
        if reactive > obs.replicas or lowest <= obs.replicas * (1.0 - self._settings.down_band):
            return step  # a scale-out is due, or a scale-in may come when the window expires
        last = min(last, self._last)
        ahead = slice(step + 1, last + 1)
        rising = np.flatnonzero((self._due[ahead] > obs.replicas) | (self._trusted[ahead] != trusted))
        end = step + int(rising[0]) if len(rising) else last
        # only the window's worth of skipped plans can still matter to the stabilizer
        for skipped in range(max(step + 1, end + 1 - self._stabilizer.window), end + 1):
            self._stabilizer.push(skipped, max(lowest, int(self._hold[skipped])))
        return end
