"""Per-key arrival forecasting (DESIGN.md §5): pure functions from history to `Forecast`.

First working version: exponential smoothing of log1p counts with the smoothing constant
chosen by backtest, and quantiles from the empirical backtest residuals per horizon step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.signal import lfilter  # type: ignore[import-untyped]  # scipy ships no stubs

from foreshard.core.forecasting.types import Forecast, InsufficientHistory
from foreshard.core.series import FloatArray, Series

__all__ = ["Forecast", "InsufficientHistory", "forecast"]

MIN_HISTORY = 3
_ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)


def _levels(y: FloatArray, alpha: float) -> FloatArray:
    # SES is a first-order linear filter; lfilter runs it in C for any length.
    zi = np.array([(1 - alpha) * y[0]])
    out, _ = lfilter([alpha], [1.0, -(1.0 - alpha)], y, zi=zi)
    return np.asarray(out, dtype=np.float64)


def forecast(
    history: Series,
    horizon_steps: int,
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    *,
    events: Sequence[object] = (),
) -> Forecast:
    if horizon_steps < 1:
        raise ValueError(f"horizon_steps must be at least 1, got {horizon_steps}")
    y = np.log1p(history.cleaned().values)
    if len(y) < MIN_HISTORY:
        raise InsufficientHistory(f"{history.key}: {len(y)} intervals of history, need {MIN_HISTORY}")
    best = min(_ALPHAS, key=lambda a: float(np.mean(np.abs(y[1:] - _levels(y, a)[:-1]))))
    level = _levels(y, best)
    resid = y[1:] - level[:-1]
    point = np.full(horizon_steps, float(level[-1]))
    spread = np.sqrt(np.arange(1, horizon_steps + 1))
    quant = {q: np.maximum(np.expm1(point + float(np.quantile(resid, q)) * spread), 0.0) for q in quantiles}
    return Forecast(
        history.key,
        history.end_s,
        history.step_s,
        np.maximum(np.expm1(point), 0.0),
        quant,
        f"ses_log({best})",
    )
