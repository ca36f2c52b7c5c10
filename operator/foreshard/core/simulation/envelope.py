"""Forecast envelopes the predictive policy plans on, for every simulator step at once.

Two sources, both causal (a step only sees trace steps completed before it):

* `seasonal_forecasts`: the planning-side forecaster. For origin o (history x[0:o]) and
  horizon h it shifts each past season's trajectory to the current level,
  ``c_k = x[o-1] + x[o-1+h-kP] - x[o-1-kP]`` for the last days and weeks (P = 1 day or 1 week),
  and takes the planning quantile across those candidates. It is vectorised over every origin,
  so a seven-month trace costs milliseconds; an origin with less than a day of history has no
  forecast (the policy falls back to reactive sizing there).
* `forecaster_forecasts`: any `Forecaster` (the contract of `foreshard.core.forecasting`) called
  on a coarser cadence; between calls the last answer is reused (shifted by the elapsed steps).

`envelope` turns a table of forecasts per origin into the two per-step peaks the policy needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshard.core.forecasting.types import Forecast
from foreshard.core.series import FloatArray, Series
from foreshard.core.simulation.policies import Envelope
from foreshard.core.simulation.workload import Workload

IntArray = npt.NDArray[np.int64]
AnyFloats = npt.NDArray[np.floating[Any]]
Forecaster = Callable[..., Forecast]  # forecast(history, horizon_steps, quantiles, *, events=())

DAY_S = 86_400.0
DAYS_BACK = 7
WEEKS_BACK = 4


def _candidate_lags(step_s: float) -> list[int]:
    day = round(DAY_S / step_s)
    if day < 2 or abs(day * step_s - DAY_S) > 1e-6:
        return []  # no whole number of steps per day: no seasonal candidates
    return sorted(
        {day * k for k in range(1, DAYS_BACK + 1)} | {7 * day * k for k in range(1, WEEKS_BACK + 1)}
    )


def seasonal_forecasts(counts: FloatArray, step_s: float, horizon_steps: int, quantile: float) -> FloatArray:
    """`table[o, h-1]`: the planning quantile of counts in step o-1+h seen from origin o (NaN: none)."""
    steps = len(counts)
    lags = _candidate_lags(step_s)
    table = np.full((steps + 1, horizon_steps), np.nan)
    if not lags:
        return table
    padded = np.concatenate((np.full(max(lags) + 1, np.nan), counts, np.full(horizon_steps, np.nan)))
    shift = max(lags) + 1
    last = padded[shift - 1 : shift - 1 + steps + 1]  # x[o-1] for o = 0..steps
    for h in range(1, horizon_steps + 1):
        candidates = np.full((steps + 1, len(lags)), np.nan)
        for column, lag in enumerate(lags):
            then = padded[shift - 1 + h - lag : shift - 1 + h - lag + steps + 1]
            base = padded[shift - 1 - lag : shift - 1 - lag + steps + 1]
            # additive, not multiplicative: a quiet past interval must not inflate a candidate
            candidates[:, column] = np.maximum(last + then - base, 0.0)
        usable = np.isfinite(candidates).any(axis=1)
        table[usable, h - 1] = np.nanquantile(candidates[usable], quantile, axis=1)
    return table


def forecaster_forecasts(
    forecaster: Forecaster,
    history: Series,
    horizon_steps: int,
    quantile: float,
    cadence_steps: int,
    min_history_steps: int,
    lookback_steps: int = 4 * 7 * 48,
) -> FloatArray:
    """The same table from an injected forecaster, called every `cadence_steps` origins.

    Between calls the last answer is reused, shifted by the steps elapsed; each call sees at most
    `lookback_steps` of history, as the operator's Prometheus lookback would.
    """
    steps = len(history)
    table = np.full((steps + 1, horizon_steps), np.nan)
    for origin in range(min_history_steps, steps + 1, max(cadence_steps, 1)):
        first = max(0, origin - lookback_steps)
        past = Series(
            history.key,
            history.start_s + first * history.step_s,
            history.step_s,
            history.values[first:origin],
        )
        answer = forecaster(past, horizon_steps + cadence_steps, (quantile,))
        if not answer.trusted:
            continue  # untrusted: no floor, the policy sizes reactively
        path = answer.quantile(quantile)
        for offset in range(min(cadence_steps, steps + 1 - origin)):
            table[origin + offset] = path[offset : offset + horizon_steps]
    return table


def envelope(workload: Workload, table: FloatArray, lead_s: float, horizon_s: float) -> Envelope:
    """Per simulator step, the forecast rate at t + lead and its peaks over [t + lead, t + horizon]
    and [t, t + horizon]."""
    trace_step, substeps = workload.trace_step_s, workload.substeps
    times = workload.step_s * np.arange(len(workload.arrivals))
    origin = np.arange(len(workload.arrivals), dtype=np.int64) // substeps  # trace steps completed before t
    return Envelope(
        due=_peak(table, origin, times + lead_s, times + lead_s, trace_step),
        ahead=_peak(table, origin, times + lead_s, times + horizon_s, trace_step),
        hold=_peak(table, origin, times, times + horizon_s, trace_step),
    )


def _peak(
    table: FloatArray, origin: IntArray, begin_s: AnyFloats, end_s: AnyFloats, step: float
) -> FloatArray:
    horizon = table.shape[1]
    first = np.floor(begin_s / step).astype(np.int64) - origin + 1  # horizon of the step holding begin
    last = np.minimum(np.floor(end_s / step).astype(np.int64) - origin + 1, horizon)
    peak = np.full(len(origin), np.nan)
    rows = table[np.minimum(origin, len(table) - 1)]
    for h in range(1, horizon + 1):
        inside = (first <= h) & (h <= last)
        values = np.where(inside, rows[:, h - 1], np.nan)
        peak = np.fmax(peak, values)
    return peak / step


def planning_envelope(
    workload: Workload,
    lead_s: float,
    horizon_s: float,
    quantile: float,
    forecaster: Forecaster | None = None,
    cadence_s: float = 6 * 3600.0,
) -> Envelope:
    """The envelope for a workload from the seasonal forecaster, or from `forecaster` on a cadence."""
    horizon_steps = int(np.ceil(horizon_s / workload.trace_step_s)) + 1
    if forecaster is None:
        table = seasonal_forecasts(workload.trace_counts, workload.trace_step_s, horizon_steps, quantile)
    else:
        history = Series(workload.name, workload.start_s, workload.trace_step_s, workload.trace_counts)
        cadence = max(round(cadence_s / workload.trace_step_s), 1)
        # the same warm-up as the seasonal forecaster: a day of history, so both start together
        minimum = max(round(DAY_S / workload.trace_step_s), 3)
        table = forecaster_forecasts(forecaster, history, horizon_steps, quantile, cadence, minimum)
    return envelope(workload, table, lead_s, horizon_s)
