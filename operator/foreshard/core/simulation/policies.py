"""Scaling policies the simulator compares: each answers the replicas to run, once per sync.

* `reactive-hpa`: the HPA on utilisation (served messages/s over ready-or-starting capacity),
  the way a CPU-based HPA sees a consumer pool: unready pods count with zero usage.
* `keda-lag`: a KEDA-style scaler on backlog; KEDA drives an HPA with an `AverageValue` target,
  so the metric is the lag (backlog plus the last sync's arrivals, as a consumer that commits
  every sync reports it) divided by a per-replica lag threshold.
* `static-peak`: a fixed count sized for a quantile of the whole trace's rate (it sees the future).
* `predictive`: the operator's own decision function, replayed (`planner.OperatorPlanner`).

Every policy has one aggressiveness knob, swept over a fixed grid by `compare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from foreshard.core.planning.target import shards_for_rate
from foreshard.core.series import FloatArray
from foreshard.core.simulation.hpa import SYNC_S, Behavior, Hpa, raw_desired

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
