"""A trace replayed live on a compressed clock, and how the run is judged. Pure: no clock, no I/O.

    trace (canonical: one Series per key, one step)
      --clock_for(speed)--> Clock: trace step -> a whole number of wall seconds
      --plan(start, history, replay, fanout, peak)--> Plan:
            history  per sub-key, on the wall grid, ending at wall time 0 (backfilled into Prometheus)
            counts   per wall step and sub-key: what the producers publish during the replay
      --judge(plan, capacity, timeline)--> ramps met ahead, shard-hours (trace time), HPA reference

One trace key becomes `fanout` sub-keys (`KEY/000`...): a key is never split across shards (strict
order), so a single-key trace (NYC taxi) needs sub-keys to spread over several shards. Each sub-key
carries its share of the key's count; counts are scaled by one factor so that the replay's peak
(99th percentile) total rate is `peak_rate` messages/s (what this machine can publish, consume and check).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from foreshard.core.planning.target import shards_for_rate
from foreshard.core.series import FloatArray, Series
from foreshard.core.simulation.engine import SimConfig, SimResult, simulate
from foreshard.core.simulation.policies import ReactiveHpa
from foreshard.core.simulation.workload import workload_from_series

DAY_S = 86_400.0
PEAK_QUANTILE = 0.99  # the replay's "peak" rate, which `peak_rate` scales to


@dataclass(frozen=True)
class Clock:
    """Trace time to wall time: one trace step lasts `wall_step_s` (whole seconds: Prometheus steps)."""

    trace_step_s: float
    wall_step_s: float

    @property
    def scale(self) -> float:
        return self.trace_step_s / self.wall_step_s

    def wall(self, trace_s: float) -> float:
        return trace_s / self.scale

    def trace(self, wall_s: float) -> float:
        return wall_s * self.scale


def clock_for(trace_step_s: float, speed: float) -> Clock:
    """The clock that plays the trace about `speed` times faster than it was recorded (144: a day in
    ten minutes), rounded so that a trace step lasts a whole number of wall seconds."""
    wall_step = max(1.0, float(round(trace_step_s / speed)))
    return Clock(trace_step_s, wall_step)


@dataclass(frozen=True)
class Plan:
    clock: Clock
    keys: tuple[str, ...]  # sub-keys, in column order of `counts`
    history: tuple[Series, ...]  # per sub-key, wall time, ending at 0 (shift before backfilling)
    counts: FloatArray  # (replay steps, sub-keys): messages to publish in each wall step
    factor: float  # trace counts -> replayed counts
    trace_start_s: float  # trace timestamp where the replay begins
    trace_totals: FloatArray  # replay window, scaled total count per trace step

    @property
    def steps(self) -> int:
        return int(self.counts.shape[0])

    @property
    def duration_s(self) -> float:
        return self.steps * self.clock.wall_step_s

    @property
    def rates(self) -> FloatArray:
        """Total messages/s (wall) of each replay step."""
        return np.asarray(self.counts.sum(axis=1) / self.clock.wall_step_s, dtype=np.float64)


def aligned(series: Sequence[Series]) -> tuple[float, float, FloatArray]:
    """(start, step, values[key, step]) over the range every key covers; gaps count 0."""
    steps = {s.step_s for s in series}
    if len(steps) != 1:
        raise ValueError(f"the keys of one trace must share a step; found {sorted(steps)}")
    step = steps.pop()
    start = max(s.start_s for s in series)
    end = min(s.end_s for s in series)
    length = round((end - start) / step)
    if length < 2:
        raise ValueError("the trace's keys do not overlap in time")
    rows = [s.cleaned().values[round((start - s.start_s) / step) :][:length] for s in series]
    return start, step, np.vstack(rows)


def first_midnight_after(start_s: float, after_s: float) -> float:
    """The first trace midnight at least `after_s` past `start_s` (a replay that starts a day)."""
    return math.ceil((start_s + after_s) / DAY_S) * DAY_S


def plan(
    series: Sequence[Series],
    clock: Clock,
    replay_start_s: float,
    history_s: float,
    replay_s: float,
    fanout: int,
    peak_rate: float,
) -> Plan:
    """The history and live counts of a replay of [replay_start, +replay_s) with `history_s` before it."""
    start, step, values = aligned(series)
    begin = round((replay_start_s - start) / step)
    back, ahead = round(history_s / step), round(replay_s / step)
    if begin - back < 0 or begin + ahead > values.shape[1]:
        raise ValueError(
            f"the trace holds {values.shape[1]} steps; the replay needs {back} before and {ahead} after "
            f"step {begin}"
        )
    live = values[:, begin : begin + ahead]
    # the 99th percentile, not the maximum: one news burst (tweets) would otherwise set the scale
    peak = float(np.quantile(live.sum(axis=0), PEAK_QUANTILE)) / clock.wall_step_s
    factor = peak_rate / peak if peak > 0 else 1.0
    keys = [f"{s.key}/{i:03d}" for s in series for i in range(fanout)]
    share = np.repeat(values * factor / fanout, fanout, axis=0)  # (sub-keys, steps)
    history = tuple(
        Series(key, -back * clock.wall_step_s, clock.wall_step_s, share[row, begin - back : begin])
        for row, key in enumerate(keys)
    )
    counts = whole_counts(share[:, begin : begin + ahead].T)
    totals = live.sum(axis=0) * factor
    return Plan(clock, tuple(keys), history, counts, factor, start + begin * step, totals)


def whole_counts(expected: FloatArray) -> FloatArray:
    """Whole messages per step and key whose running sums track the expected ones (no drift)."""
    cumulative = np.floor(np.cumsum(expected, axis=0) + 0.5)
    return np.diff(cumulative, axis=0, prepend=np.zeros((1, expected.shape[1])))


# -- judging a run ---------------------------------------------------------------------------


def needed_shards(rates: FloatArray, capacity: float, headroom: float) -> FloatArray:
    """Shards each step's actual rate needs at the queue's capacity and headroom."""
    utilization = 1.0 / (1.0 + headroom)
    return np.array([shards_for_rate(float(r), capacity, utilization) for r in rates], dtype=np.float64)


def ramps(needed: FloatArray, memory_steps: int) -> list[int]:
    """Steps where the need rises above everything of the previous `memory_steps` (a new level,
    not jitter around one), excluding step 0 (the starting size is not a scale-out)."""
    out = []
    for i in range(1, len(needed)):
        if needed[i] > needed[max(0, i - memory_steps) : i].max():
            out.append(i)
    return out


@dataclass(frozen=True)
class Judgement:
    ramps: int
    ramps_scaled_ahead: int
    shard_hours: float  # trace time
    hpa_shard_hours: float
    hpa_violation_minutes: float
    ramp_times_s: list[float]  # wall seconds since the replay began
    hpa_ready: FloatArray  # the HPA formula's ready shards per simulator step
    hpa_step_s: float  # wall seconds per simulator step

    @property
    def ramps_scaled_ahead_fraction(self) -> float | None:
        return self.ramps_scaled_ahead / self.ramps if self.ramps else None


def ready_at(times_s: FloatArray, ready: FloatArray, at_s: float) -> float:
    """Ready shards sampled last at or before `at_s` (0 before the first sample)."""
    index = int(np.searchsorted(times_s, at_s, side="right")) - 1
    return float(ready[index]) if index >= 0 else 0.0


def judge(
    replay: Plan,
    capacity: float,
    headroom: float,
    lead_s: float,
    times_s: FloatArray,
    ready: FloatArray,
    memory_steps: int = 6,
) -> Judgement:
    """Ramps of the actual need met by shards Ready at the ramp's start (`times_s`: wall seconds
    since the replay began, `ready`: ready shards then); shard-hours in trace time next to the
    HPA formula's on the same arrivals (`lead_s`: wall seconds a new shard takes)."""
    wall = replay.clock.wall_step_s
    need = needed_shards(replay.rates, capacity, headroom)
    found = ramps(need, memory_steps)
    met = sum(ready_at(times_s, ready, i * wall) >= need[i] for i in found)
    shard_s = float(np.sum(np.diff(times_s) * ready[:-1])) if len(times_s) > 1 else 0.0
    hpa = hpa_reference(replay, capacity, headroom, lead_s)
    return Judgement(
        len(found),
        int(met),
        shard_s * replay.clock.scale / 3600.0,
        hpa.shard_hours,
        hpa.slo_violation_minutes,
        [i * wall for i in found],
        hpa.trajectory.ready,
        replay.clock.wall_step_s / hpa_substeps(replay),
    )


def hpa_reference(replay: Plan, capacity: float, headroom: float, lead_s: float) -> SimResult:
    """The HPA formula on the same arrivals, in trace time (shard-hours, SLO violation minutes, and
    its replicas per simulator step for the plot).

    Capacity is per wall second; on the trace clock a shard carries capacity / scale per second.
    """
    scale = replay.clock.scale
    total = Series("replay", replay.trace_start_s, replay.clock.trace_step_s, replay.trace_totals)
    workload = workload_from_series(
        "replay", [total], step_s=replay.clock.trace_step_s / hpa_substeps(replay)
    )
    trace_capacity = capacity / scale
    return simulate(
        workload,
        ReactiveHpa(trace_capacity, 1.0 / (1.0 + headroom)),
        SimConfig(capacity=trace_capacity, lead_s=lead_s * scale),
    )


def hpa_substeps(replay: Plan, sync_s: float = 15.0) -> int:
    """Simulator steps per trace step: the HPA's 15 s sync or the nearest shorter divisor."""
    return math.ceil(replay.clock.trace_step_s / sync_s)
