"""Regular time series of per-interval counts: the common currency of forecasting and planning.

A `Series` is a key, a start time (Unix seconds), a fixed step and one value per step.
Missing intervals are NaN until `cleaned()` fills them; values are counts per interval
(messages in that step), not rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Series:
    key: str
    start_s: float
    step_s: float
    values: FloatArray

    def __len__(self) -> int:
        return len(self.values)

    @property
    def end_s(self) -> float:
        """Start of the interval after the last one."""
        return self.start_s + self.step_s * len(self.values)

    def timestamps(self) -> FloatArray:
        return self.start_s + self.step_s * np.arange(len(self.values), dtype=np.float64)

    def rates(self) -> FloatArray:
        """Messages per second in each interval."""
        return self.values / self.step_s

    def cleaned(self) -> Series:
        """Negative counts become missing; missing values are filled linearly (ends: nearest)."""
        values = np.where(np.isfinite(self.values) & (self.values >= 0), self.values, np.nan)
        missing = np.isnan(values)
        if missing.all():
            return Series(self.key, self.start_s, self.step_s, np.zeros_like(values))
        if missing.any():
            index = np.arange(len(values))
            values[missing] = np.interp(index[missing], index[~missing], values[~missing])
        return Series(self.key, self.start_s, self.step_s, values)

    def tail(self, n: int) -> Series:
        n = min(n, len(self.values))
        return Series(
            self.key, self.end_s - n * self.step_s, self.step_s, self.values[len(self.values) - n :]
        )


def infer_step(timestamps: FloatArray) -> float:
    """The most common positive gap between consecutive distinct timestamps."""
    gaps = np.diff(np.unique(timestamps))
    if len(gaps) == 0:
        raise ValueError("a series needs at least two distinct timestamps to infer its step")
    values, counts = np.unique(np.round(gaps, 6), return_counts=True)
    return float(values[np.argmax(counts)])


def regularize(key: str, timestamps: FloatArray, values: FloatArray, step_s: float | None = None) -> Series:
    """Put irregular samples on a grid of `step_s`.

    Timestamps are snapped to the grid anchored at the first one. A duplicate timestamp keeps
    the last row (a re-exported row corrects an earlier one, as a Prometheus sample would);
    a gap becomes NaN so that callers can tell missing from zero.
    """
    if len(timestamps) != len(values):
        raise ValueError(f"{key}: {len(timestamps)} timestamps but {len(values)} values")
    if len(timestamps) == 0:
        raise ValueError(f"{key}: the series is empty")
    order = np.argsort(timestamps, kind="stable")
    ts, vs = timestamps[order], values[order].astype(np.float64)
    step = step_s if step_s is not None else infer_step(ts)
    slots = np.round((ts - ts[0]) / step).astype(np.int64)
    grid = np.full(int(slots[-1]) + 1, np.nan)
    grid[slots] = vs  # later rows overwrite earlier ones at the same slot
    return Series(key, float(ts[0]), float(step), grid)


def counts_from_events(
    key: str, event_times: FloatArray, step_s: float, start_s: float | None = None
) -> Series:
    """Turn a raw arrival log (one timestamp per message) into counts per step."""
    if len(event_times) == 0:
        raise ValueError(f"{key}: the arrival log has no rows")
    start = float(np.floor((start_s if start_s is not None else event_times.min()) / step_s) * step_s)
    slots = np.floor((event_times - start) / step_s).astype(np.int64)
    slots = slots[slots >= 0]
    return Series(key, start, step_s, np.bincount(slots).astype(np.float64))
