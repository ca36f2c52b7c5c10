"""A queue's arrivals as the simulator replays them.

Every file of a trace directory is one key; files start together at replay time 0 (their own
timestamps only fix the order of their rows) and a key whose file ends early receives nothing
afterwards. Counts of one trace step are spread uniformly over that step: the simulator's step
divides the trace step, so each of its sub-steps receives `count / substeps` messages. Uniform
spreading is the only choice that invents no burst the trace does not show; the rate inside a
trace step is unknown, and any other shape would favour one policy's reaction time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from foreshard.core.series import FloatArray, Series

DEFAULT_SHARDS_AT_P99 = 16  # default capacity: the p99 of the total arrival rate needs 16 shards


@dataclass(frozen=True)
class Workload:
    """Total arrivals of one queue on the simulator's grid, plus the trace-step totals it came from."""

    name: str
    step_s: float  # simulator step
    arrivals: FloatArray  # messages arriving in each simulator step
    trace_step_s: float  # step of the trace files
    trace_counts: FloatArray  # total messages per trace step (what a forecaster sees)
    keys: tuple[str, ...]
    start_s: float = 0.0  # wall-clock start of replay time 0 (the earliest file), for seasonal phases

    @property
    def substeps(self) -> int:
        return round(self.trace_step_s / self.step_s)

    @property
    def duration_s(self) -> float:
        return self.step_s * len(self.arrivals)

    def trace_rates(self) -> FloatArray:
        return self.trace_counts / self.trace_step_s

    def default_capacity(self) -> float:
        """Messages/s one shard sustains by default: p99 of the total arrival rate over 16."""
        return max(float(np.quantile(self.trace_rates(), 0.99)) / DEFAULT_SHARDS_AT_P99, 1e-9)


def total_counts(series: Sequence[Series]) -> tuple[float, FloatArray]:
    """Sum keys that start together at replay time 0; all files of a queue must share one step."""
    if not series:
        raise ValueError("a workload needs at least one series")
    steps = {s.step_s for s in series}
    if len(steps) != 1:
        raise ValueError(f"the files of one queue must share a step; found steps {sorted(steps)}")
    length = max(len(s) for s in series)
    total = np.zeros(length)
    for s in series:
        values = s.cleaned().values
        total[: len(values)] += values
    return steps.pop(), total


def workload_from_series(name: str, series: Sequence[Series], step_s: float = 15.0) -> Workload:
    trace_step, counts = total_counts(series)
    ratio = trace_step / step_s
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
        raise ValueError(f"the simulator step {step_s:g}s must divide the trace step {trace_step:g}s")
    substeps = round(ratio)
    arrivals = np.repeat(counts / substeps, substeps)
    keys = tuple(sorted(s.key for s in series))
    start = min(s.start_s for s in series)
    return Workload(name, step_s, arrivals, trace_step, counts, keys, start)
