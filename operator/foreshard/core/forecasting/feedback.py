"""Realised forecast quality per series, and the trust verdict the planner falls back on.

State in, observation in, state out: `observe` folds one realised interval into exponentially
weighted error and coverage figures; `verdict` says whether the planner may size from the
forecast. Arrays work as well as scalars, so one call updates every key of a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foreshard.core.series import FloatArray

HALF_LIFE = 288.0  # observations (a day of 5-minute steps): slow enough to be stable, fast enough to notice
MIN_OBSERVATIONS = 12
MAX_ERROR_RATIO = 1.0  # worse than the seasonal-naive / naive reference: not trusted
MIN_COVERAGE = 0.75  # p90 band breached far more often than 10 % of the time: not trusted


@dataclass(frozen=True)
class Feedback:
    observations: FloatArray
    error: FloatArray  # EW mean absolute error of the forecast
    reference_error: FloatArray  # EW mean absolute error of the reference (seasonal naive or naive)
    coverage: FloatArray  # EW share of actuals at or below the 0.9 quantile

    @staticmethod
    def empty(keys: int) -> Feedback:
        zeros = np.zeros(keys)
        return Feedback(zeros, zeros, zeros, np.ones(keys))

    @property
    def error_ratio(self) -> FloatArray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(self.reference_error > 0, self.error / self.reference_error, 1.0)
        return np.asarray(np.where(self.error == 0, 0.0, ratio), dtype=np.float64)


def observe(
    state: Feedback, actual: FloatArray, point: FloatArray, upper: FloatArray, reference: FloatArray
) -> Feedback:
    """Fold one realised interval per key into the rolling figures (NaN actuals are skipped)."""
    seen = np.isfinite(actual)
    weight = np.where(seen, np.maximum(1.0 / (state.observations + 1.0), 1.0 - 0.5 ** (1.0 / HALF_LIFE)), 0.0)
    safe = np.where(seen, actual, 0.0)

    def blend(old: FloatArray, new: FloatArray) -> FloatArray:
        return np.asarray(old + weight * (new - old), dtype=np.float64)

    return Feedback(
        state.observations + seen,
        blend(state.error, np.abs(safe - point)),
        blend(state.reference_error, np.abs(safe - reference)),
        blend(state.coverage, (safe <= upper).astype(np.float64)),
    )


def verdict(state: Feedback) -> tuple[np.ndarray, list[str]]:
    """Trusted flags and a reason per key (stable CamelCase, for conditions)."""
    young = state.observations < MIN_OBSERVATIONS
    worse = state.error_ratio > MAX_ERROR_RATIO
    uncovered = state.coverage < MIN_COVERAGE
    reasons = [
        "WarmingUp" if y else "WorseThanBaseline" if w else "IntervalsTooNarrow" if u else "ForecastTrusted"
        for y, w, u in zip(young.tolist(), worse.tolist(), uncovered.tolist(), strict=True)
    ]
    return ~(worse | uncovered) | young, reasons
