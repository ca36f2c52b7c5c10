"""A queue's demand ahead: per-key forecasts of its arrival history, summed. Pure.

    history per key --bound (heaviest MAX_KEYS + one tail)--> forecast each --sum--> one Forecast
    between refits (the forecast loop, the simulator's replay): `refresh` refits a series when its
    turn comes (REFIT_PERIOD) and otherwise rolls the last fit forward over the new intervals

Summing a quantile over keys over-states the quantile of the sum (keys rarely peak together),
which errs on the side of capacity; the planner's headroom is applied on top of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from foreshard.core.forecasting import (
    Fitted,
    Forecast,
    InsufficientHistory,
    ScheduledEvent,
    fit,
    forecast,
    predict,
    selection,
)
from foreshard.core.forecasting.selection import DAY_S
from foreshard.core.series import FloatArray, Series

MAX_KEYS = 50  # keys forecast on their own; fit cost grows with keys, the tail is one more series
TAIL = "__tail__"
# the summed forecast is trusted when trusted keys carry at least this share of the predicted volume:
# a sparse key that no model can vouch for should not throw away the forecast of the heavy ones
TRUSTED_SHARE = 0.8
# forecast cycles between two refits of one series (the forecast loop refits a twelfth of its series
# per cycle, fleet.due_for_refit); between refits the fit is rolled forward over new data
REFIT_PERIOD = 12
BASIS_STEPS = 3  # newest intervals a forecast's basis compares (Prometheus revises the newest ones)


@dataclass(frozen=True)
class Demand:
    forecast: Forecast  # counts per step, summed over keys, one path per quantile
    observed_rate: float  # messages/s in the latest interval that has data
    keys: int  # series forecast (tracked keys plus the tail)
    trusted_share: float  # share of the point forecast carried by trusted per-key forecasts


def total(values: Sequence[FloatArray]) -> FloatArray:
    """Element-wise sum where missing stays missing only when every part is missing."""
    stack = np.vstack(values)
    return np.where(np.isnan(stack).all(axis=0), np.nan, np.nansum(stack, axis=0))


def bound(history: Mapping[str, Series], limit: int = MAX_KEYS) -> list[Series]:
    """The `limit` heaviest keys (ties by name, for determinism) and the others summed as TAIL."""
    ranked = sorted(history.values(), key=lambda s: (-float(np.nansum(s.values)), s.key))
    kept, rest = ranked[:limit], ranked[limit:]
    if rest:
        first = rest[0]
        kept.append(Series(TAIL, first.start_s, first.step_s, total([s.values for s in rest])))
    return kept


def latest_rate(history: Sequence[Series]) -> float:
    """Messages/s summed over keys in the last interval with any data; 0 without data."""
    if not history:
        return 0.0
    summed = total([s.values for s in history])
    seen = np.flatnonzero(np.isfinite(summed))
    return float(summed[seen[-1]] / history[0].step_s) if len(seen) else 0.0


def horizon_steps(history_end_s: float, now_s: float, horizon_s: float, step_s: float) -> int:
    """Steps from the end of the history far enough to cover now + horizon."""
    return max(1, math.ceil((now_s + horizon_s - history_end_s) / step_s - 1e-9))


def estimate(
    history: Mapping[str, Series],
    now_s: float,
    horizon_s: float,
    quantile: float,
    limit: int = MAX_KEYS,
    day_s: float = DAY_S,
) -> Demand:
    """Forecast every bounded key and sum; raises InsufficientHistory when no key can be forecast.

    `day_s`: a day on the queue's clock (spec.forecast.timeScale shortens it for replays)."""
    series = bound(history, limit)
    if not series:
        raise InsufficientHistory("Prometheus has no arrivals recorded for this queue yet")
    first = series[0]
    steps = horizon_steps(first.end_s, now_s, horizon_s, first.step_s)
    fitted: list[Forecast] = []
    for one in series:
        try:
            fitted.append(forecast(one, steps, (quantile,), day_s=day_s))
        except InsufficientHistory:
            continue  # a key seen a couple of times only; its volume is negligible by definition
    if not fitted:
        raise InsufficientHistory(f"none of {len(series)} keys has enough history to forecast")
    return combine(fitted, quantile, latest_rate(series), len(series))


def combine(fitted: Sequence[Forecast], quantile: float, rate: float, keys: int) -> Demand:
    """Sum per-series forecasts (same start, step and length) into the queue's demand."""
    mean = np.sum([f.mean for f in fitted], axis=0)
    band = np.sum([f.quantile(quantile) for f in fitted], axis=0)
    volume = float(mean.sum())
    trusted_volume = float(sum(f.mean.sum() for f in fitted if f.trusted))
    share = trusted_volume / volume if volume > 0 else float(all(f.trusted for f in fitted))
    first = fitted[0]
    summed = Forecast(
        "__total__",
        first.start_s,
        first.step_s,
        mean,
        {quantile: band},
        f"sum of {len(fitted)} per-key forecasts, {share:.0%} of the volume trusted",
        share >= TRUSTED_SHARE,
    )
    return Demand(summed, rate, keys, share)


@dataclass
class FitState:
    """One series' fit and its last forecast, carried between forecast cycles (a cache only)."""

    fitted: Fitted
    fitted_at_s: float
    fit_seconds: float  # wall time of the fit (0 where no clock is read)
    forecast: Forecast | None = None  # the last forecast, reused while its inputs are unchanged
    basis: tuple[float, int, bytes] = (0.0, 0, b"")
    allowed: tuple[str, ...] | None = None  # the model classes the fit was restricted to


def basis_of(history: Series, steps: int, salt: str) -> tuple[float, int, bytes]:
    """What a forecast depends on besides the fit: where the history ends, its newest values, the
    horizon, and `salt` (events and quantiles asked for)."""
    return history.end_s, steps, history.values[-BASIS_STEPS:].tobytes() + salt.encode()


def refresh(
    state: FitState | None,
    history: Series,
    steps: int,
    refit: bool,
    quantiles: Sequence[float],
    events: Iterable[ScheduledEvent] = (),
    now_s: float = 0.0,
    stopwatch: Callable[[], float] = lambda: 0.0,
    allowed: tuple[str, ...] | None = None,
    statistical: bool = True,
    day_s: float = DAY_S,
) -> FitState:
    """The series' state after one cycle: refitted when `refit` (its turn), when it has no fit or
    when the fit's horizon is too short; otherwise the last fit rolled forward (no refit), and the
    last forecast reused while history, horizon, quantiles and events are unchanged.

    Raises InsufficientHistory when the series cannot be fitted. `stopwatch` times the fit
    (the forecast loop passes a wall clock; a replay passes none). `allowed`: the model classes
    (spec.forecast.models, or an OPF's model); a change of them refits at once. `statistical`:
    whether the statsmodels candidates may join (the simulator's replay leaves them out: a
    second of CPU per refit over thousands of replayed cycles). `day_s`: how long a day lasts on
    the queue's clock (spec.forecast.timeScale compresses it).
    """
    if state is None or refit or state.fitted.horizon < steps or state.allowed != allowed:
        # the statsmodels candidates join at a series' second (staggered) fit, unless nothing
        # else is allowed, so that a cold start, every series at once, stays fast
        slow = (statistical and state is not None) or selection.only_statsmodels(allowed)
        began = stopwatch()
        fitted = fit(history, steps, allowed=allowed, statistical_models=slow, day_s=day_s)
        state = FitState(fitted, now_s, stopwatch() - began, allowed=allowed)
    events = tuple(events)
    basis = basis_of(history, steps, repr((tuple(quantiles), events)))
    if state.forecast is None or state.basis != basis:
        state.forecast, state.basis = predict(state.fitted, history, steps, quantiles, events), basis
    return state


@dataclass(frozen=True)
class Turn:
    """One series' part of a forecast cycle: what `refresh` needs besides the cycle's `Common`."""

    state: FitState | None
    history: Series
    steps: int
    refit: bool
    allowed: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Common:
    """What every series of one forecast cycle shares."""

    quantiles: tuple[float, ...]
    events: tuple[ScheduledEvent, ...] = ()
    now_s: float = 0.0
    day_s: float = DAY_S


RefreshAll = Callable[[Mapping[str, Turn], Common, Callable[[], float]], dict[str, "FitState | str"]]


def refresh_all(
    turns: Mapping[str, Turn], common: Common, stopwatch: Callable[[], float] = lambda: 0.0
) -> dict[str, FitState | str]:
    """`refresh` for each series id: its new state, or why it cannot be fitted (the message of
    InsufficientHistory). One call for a whole cycle, so a child process can run it in one trip
    (adapters/fitprocess.py)."""
    out: dict[str, FitState | str] = {}
    for sid, turn in turns.items():
        try:
            out[sid] = refresh(
                turn.state,
                turn.history,
                turn.steps,
                turn.refit,
                common.quantiles,
                common.events,
                common.now_s,
                stopwatch,
                allowed=turn.allowed,
                day_s=common.day_s,
            )
        except InsufficientHistory as error:
            out[sid] = str(error)
    return out


def band_at(
    parts: Sequence[Forecast], now_s: float, lower_q: float, upper_q: float
) -> tuple[float, float, float] | None:
    """(lower, point, upper) messages/s of the summed forecasts over the step that holds `now_s`.

    The bounds are per-key quantiles summed (wider than the sum's own quantiles: keys rarely peak
    together); None when there are no parts, the step is beyond the path, or a quantile is missing.
    """
    if not parts or any(lower_q not in p.quantiles or upper_q not in p.quantiles for p in parts):
        return None
    first = parts[0]
    index = max(0, int((now_s - first.start_s) // first.step_s))
    if index >= len(first.mean):
        return None
    total = [sum(float(path[index]) for path in paths) / first.step_s for paths in (
        [p.quantile(lower_q) for p in parts], [p.mean for p in parts], [p.quantile(upper_q) for p in parts]
    )]  # fmt: skip
    return total[0], total[1], total[2]
