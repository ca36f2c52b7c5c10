"""What an OrderParamForecast's status says: bounded points, the model and why, accuracy. Pure.

    Forecast --horizon_points--> short and long horizons, rates with p10/p50/p90/p99 (bounded)
    Fitted --why--> the chosen model and the backtest scores of the candidates
    status.accuracy + newly realised interval --score--> realised MASE (vs seasonal naive and
        vs naive) and p90 coverage, exponentially weighted (core/forecasting/feedback.py)

Accuracy is state in status (so a restarted operator carries on from it): the absolute errors
of the forecast and of both references, the coverage, how many intervals were scored, and the
one-step forecast still waiting for its interval to be realised. A fresh fit seeds the figures by
replaying its model over the recent history one step at a time (`replay`); realised intervals
then take over with the half-life of feedback.HALF_LIFE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from foreshard.core.forecasting import feedback, selection
from foreshard.core.forecasting.intervals import quantile_paths
from foreshard.core.forecasting.selection import Fitted
from foreshard.core.forecasting.types import Forecast
from foreshard.core.series import FloatArray, Series

MAX_POINTS = 144  # per horizon; the CRD bounds status.horizons[].points at 144
MAX_CANDIDATES = 12
QUANTILES = (0.1, 0.5, 0.9, 0.99)
REPLAY = 288  # recent intervals a fresh fit is scored on before realised errors exist


def iso(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def horizon_points(forecast: Forecast, now_s: float, horizon_s: float) -> list[dict[str, Any]]:
    """Rates (messages/s) of the intervals that start before now + horizon, at most MAX_POINTS.

    Longer paths are bucketed: a bucket shows the mean of its points and the widest of their bands
    (lowest p10, highest p90 and p99), so bounding the size never narrows an interval.
    """
    starts = forecast.start_s + forecast.step_s * np.arange(len(forecast.mean))
    inside = np.flatnonzero((starts < now_s + horizon_s) & (starts + forecast.step_s > now_s))
    if not len(inside):
        inside = np.arange(min(1, len(forecast.mean)))
    size = math.ceil(len(inside) / MAX_POINTS)
    rate = {q: forecast.quantile(q) / forecast.step_s for q in QUANTILES if q in forecast.quantiles}
    mean = forecast.mean / forecast.step_s
    points = []
    for first in range(0, len(inside), size):
        rows = inside[first : first + size]
        point = {"time": iso(float(starts[rows[0]])), "mean": _round(float(mean[rows].mean()))}
        for q, path in rate.items():
            pick = np.min if q < 0.5 else np.median if q == 0.5 else np.max
            point[f"p{round(q * 100)}"] = _round(float(pick(path[rows])))
        points.append(point)
    return points


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def why(model: str, scores: Mapping[str, float], origins: int) -> tuple[str, list[dict[str, Any]]]:
    """A sentence on the choice and the candidates' backtest scores (lowest first, bounded)."""
    ranked = sorted(scores.items(), key=lambda item: (item[1], item[0]))[:MAX_CANDIDATES]
    candidates = [{"model": name[:128], "backtestMAE": _round(score)} for name, score in ranked]
    if not ranked:
        return f"{model}: forced by spec.model (no backtest)", candidates
    others = ", ".join(f"{name} {score:.3g}" for name, score in ranked[1:4])
    sentence = (
        f"{model}: lowest mean absolute error (messages per step) in a rolling-origin backtest over "
        f"{origins} origins; best of {len(scores)} candidate families"
    )
    return (f"{sentence} (next: {others})" if others else sentence)[:1024], candidates


@dataclass(frozen=True)
class Accuracy:
    """One series' realised accuracy; two Feedback states share coverage and observations."""

    seasonal: feedback.Feedback  # reference: seasonal naive (naive when there is no season)
    naive: feedback.Feedback
    replayed: int

    def to_status(self, pending: Mapping[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mase": _round(float(self.seasonal.error_ratio[0])),
            "maseNaive": _round(float(self.naive.error_ratio[0])),
            "coverage90": _round(float(self.seasonal.coverage[0])),
            # intervals scored in all, of which `replayed` came from the history at the last fit
            "observations": int(self.seasonal.observations[0]),
            "replayed": self.replayed,
            "meanAbsoluteError": _round(float(self.seasonal.error[0])),
            "seasonalNaiveError": _round(float(self.seasonal.reference_error[0])),
            "naiveError": _round(float(self.naive.reference_error[0])),
        }
        if pending is not None:
            out["pending"] = dict(pending)
        return out

    @staticmethod
    def from_status(accuracy: Mapping[str, Any]) -> Accuracy | None:
        if "meanAbsoluteError" not in accuracy:
            return None

        def one(reference: str) -> feedback.Feedback:
            return feedback.Feedback(
                np.array([float(accuracy.get("observations", 0))]),
                np.array([float(accuracy["meanAbsoluteError"])]),
                np.array([float(accuracy.get(reference, 0.0))]),
                np.array([float(accuracy.get("coverage90", 1.0))]),
            )

        return Accuracy(one("seasonalNaiveError"), one("naiveError"), int(accuracy.get("replayed", 0)))


def observe(
    state: Accuracy, actual: float, point: float, upper: float, seasonal: float, naive: float
) -> Accuracy:
    def one(f: feedback.Feedback, reference: float) -> feedback.Feedback:
        return feedback.observe(
            f, np.array([actual]), np.array([point]), np.array([upper]), np.array([reference])
        )

    return Accuracy(one(state.seasonal, seasonal), one(state.naive, naive), state.replayed)


def references(y: FloatArray, index: int, season: int | None) -> tuple[float, float]:
    """Seasonal-naive and naive forecasts of interval `index` (made before it), from the history."""
    naive = float(y[index - 1]) if index >= 1 else 0.0
    seasonal = float(y[index - season]) if season and index >= season else naive
    return seasonal, naive


def replay(
    y: FloatArray, one_step: FloatArray, upper: FloatArray, season: int | None, first: int
) -> Accuracy:
    """Score one-step forecasts of y[first:] (made causally by the fitted model) against both references."""
    state = Accuracy(feedback.Feedback.empty(1), feedback.Feedback.empty(1), 0)
    for offset, index in enumerate(range(first, len(y))):
        seasonal, naive = references(y, index, season)
        state = observe(
            state, float(y[index]), float(one_step[offset]), float(upper[offset]), seasonal, naive
        )
    return Accuracy(state.seasonal, state.naive, len(y) - first)


def value_at(series: Series, time_s: float) -> float | None:
    """The realised count of the interval starting at `time_s`, None when not (yet) observed."""
    index = round((time_s - series.start_s) / series.step_s)
    if not 0 <= index < len(series):
        return None
    value = float(series.values[index])
    return value if math.isfinite(value) else None


def season_of(step_s: float, length: int, day_s: float = selection.DAY_S) -> int | None:
    """The daily season in steps when the history holds more than one day of it, else None."""
    seasons = selection.seasons_for(step_s, day_s)
    return seasons[0] if seasons and length > seasons[0] + 1 else None


def replay_fit(
    history: Series, fitted: Fitted, upper_q: float = 0.9, day_s: float = selection.DAY_S
) -> Accuracy:
    """Seed accuracy: the fitted model's one-step forecasts over the last REPLAY intervals.

    The level models are causal (the forecast at t uses y[:t] only), so this is the error the
    model would have made live, except that its parameters were chosen on the same window.
    """
    y = history.cleaned().values
    first = max(1, len(y) - REPLAY)
    origins = np.arange(first, len(y), dtype=np.int64)
    if not len(origins):
        return Accuracy(feedback.Feedback.empty(1), feedback.Feedback.empty(1), 0)
    base = round(history.start_s / history.step_s)
    point = selection.combined_paths(y, fitted, base, origins, 1)
    upper = quantile_paths(point, fitted.residuals, upper_q, fitted.samples)
    return replay(y, point[:, 0], upper[:, 0], season_of(history.step_s, len(y), day_s), first)


def score(
    state: Accuracy, pending: Mapping[str, Any] | None, history: Series, day_s: float = selection.DAY_S
) -> tuple[Accuracy, bool]:
    """Fold the pending one-step forecast in once its interval is realised; (state, scored)."""
    if not pending:
        return state, False
    actual = value_at(history, _parse(str(pending["time"])))
    if actual is None:
        return state, False
    y = history.cleaned().values
    index = round((_parse(str(pending["time"])) - history.start_s) / history.step_s)
    seasonal, naive = references(y, index, season_of(history.step_s, len(y), day_s))
    return observe(state, actual, float(pending["mean"]), float(pending["p90"]), seasonal, naive), True


def pending_of(forecast: Forecast) -> dict[str, Any]:
    """The forecast of the next interval (counts), scored when that interval is realised."""
    upper = forecast.quantile(0.9) if 0.9 in forecast.quantiles else forecast.mean
    return {
        "time": iso(forecast.start_s),
        "mean": _round(float(forecast.mean[0])),
        "p90": _round(float(upper[0])),
    }


def _parse(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
