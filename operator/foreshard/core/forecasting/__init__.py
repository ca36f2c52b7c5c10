"""Per-key arrival forecasting (DESIGN.md §5): pure functions from history to `Forecast`.

    history --clean--> fit (backtest every candidate, keep the best, store its residuals)
            --predict--> point path + conformal quantiles --events--> Forecast

Candidates: smoothed level (raw or log1p, with or without a daily/weekly profile, with or
without burst resets; naive and SES among them), seasonal naive, TSB for intermittent keys,
for tracked series the statsmodels models (Holt-Winters, ARIMA, SARIMAX), and the median of the
best 3, 5 or 8. See docs/forecasting.md for the measured accuracy against baselines.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np

from foreshard.core.forecasting import selection
from foreshard.core.forecasting.events import ScheduledEvent, learn_multiplier, multipliers
from foreshard.core.forecasting.intervals import quantile_paths
from foreshard.core.forecasting.models import LEVEL, SNAIVE, Spec
from foreshard.core.forecasting.selection import Fitted
from foreshard.core.forecasting.types import Forecast, InsufficientHistory
from foreshard.core.series import Series

__all__ = [
    "Fitted",
    "Forecast",
    "InsufficientHistory",
    "ScheduledEvent",
    "fit",
    "forecast",
    "learn_multiplier",
    "predict",
]

MIN_HISTORY = 3  # intervals with a real observation; below this there is nothing to smooth
MIN_TRUSTED_ORIGINS = 10  # backtest origins below which a fit cannot vouch for itself


def phase_base(series: Series) -> int:
    """Absolute step index of the first interval, so that seasonal phases follow the clock."""
    return round(series.start_s / series.step_s)


def fit(
    history: Series,
    horizon_steps: int,
    *,
    allowed: Collection[str] | None = None,
    statistical_models: bool = False,
    day_s: float = selection.DAY_S,
) -> Fitted:
    """Choose and fit a model for `history`; raises InsufficientHistory when it is too short.

    `allowed` restricts the candidates to these model classes (`selection.MODEL_CLASSES`, the
    names of spec.forecast.models); `statistical_models` adds the statsmodels candidates (for
    tracked series: a fit then costs tenths of a second instead of tens of milliseconds);
    `day_s`: the length of a day on the queue's clock (shorter in a time-compressed replay).
    """
    if horizon_steps < 1:
        raise ValueError(f"horizon_steps must be at least 1, got {horizon_steps}")
    observed = int(np.sum(np.isfinite(history.values) & (history.values >= 0)))
    if observed < MIN_HISTORY:
        raise InsufficientHistory(
            f"{history.key}: {observed} usable intervals of history, need at least {MIN_HISTORY}"
        )
    return selection.fit(
        history.cleaned().values,
        phase_base(history),
        history.step_s,
        horizon_steps,
        allowed=allowed,
        statistical_models=statistical_models,
        day_s=day_s,
    )


def predict(
    fitted: Fitted,
    history: Series,
    horizon_steps: int,
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    events: Iterable[ScheduledEvent] = (),
) -> Forecast:
    """Roll a fitted model forward over `history` (possibly newer than the fit) and forecast."""
    y = history.cleaned().values
    origin = np.array([len(y)], dtype=np.int64)
    point = selection.combined_paths(y, fitted, phase_base(history), origin, horizon_steps)[0]
    factor = multipliers(history.key, history.end_s, history.step_s, horizon_steps, events)
    # steps beyond the fitted horizon borrow the spread of its last step
    extra = max(0, horizon_steps - fitted.horizon)
    residuals = np.concatenate([fitted.residuals, np.repeat(fitted.residuals[:, -1:], extra, axis=1)], axis=1)
    bands = {
        q: quantile_paths(point[None, :], residuals, q, fitted.samples)[0] * factor for q in sorted(quantiles)
    }
    return Forecast(
        history.key, history.end_s, history.step_s, point * factor, bands, fitted.name, trusted(fitted)
    )


def trusted(fitted: Fitted) -> bool:
    """The backtest beat the seasonal-naive (or, without a season, the naive) reference."""
    if fitted.validation_origins < MIN_TRUSTED_ORIGINS:
        return False
    seasonal = [score for name, score in fitted.scores.items() if name.startswith(SNAIVE)]
    naive = fitted.scores.get(Spec(LEVEL, False, 0, 1.0).name)
    references = [s for s in [*seasonal[:1], naive] if s is not None]
    best = min(fitted.scores.values())
    return not references or best <= min(references)


def forecast(
    history: Series,
    horizon_steps: int,
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    *,
    events: Iterable[ScheduledEvent] = (),
    day_s: float = selection.DAY_S,
) -> Forecast:
    """Counts per step for the `horizon_steps` intervals after `history`, with quantiles.

    Never negative, never NaN, quantiles non-decreasing in q. Gaps, NaN and negative counts in
    the history are cleaned first; fewer than MIN_HISTORY usable intervals raise
    InsufficientHistory.
    """
    return predict(fit(history, horizon_steps, day_s=day_s), history, horizon_steps, quantiles, events)
