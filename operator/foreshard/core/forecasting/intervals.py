"""Quantile forecasts from backtest residuals (split-conformal style), never negative.

A fitted model keeps, per horizon step, quantiles of `log1p(actual) - log1p(point)` from its
backtest. The q-quantile forecast is the point forecast shifted by the q-quantile residual in
log1p space: multiplicative spread for large counts, additive near zero, monotone in q by
construction, and calibrated to the model's own recent errors rather than to an assumed
distribution.
"""

from __future__ import annotations

import numpy as np

from foreshard.core.forecasting.selection import RESIDUAL_LEVELS
from foreshard.core.series import FloatArray


def residual_quantile(residuals: FloatArray, q: float) -> FloatArray:
    """The q-quantile residual per horizon step, interpolated in the stored table."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile levels lie in [0, 1], got {q}")
    rows = np.asarray([np.interp(q, RESIDUAL_LEVELS, residuals[:, k]) for k in range(residuals.shape[1])])
    return np.asarray(rows, dtype=np.float64)


def conformal_level(q: float, samples: int) -> float:
    """Split-conformal finite-sample correction: with m residuals use level q(m+1)/m (upper
    tail; mirrored for the lower), so that short histories get wider, not overconfident, bands."""
    if samples <= 0:
        return q
    if q >= 0.5:
        return min(1.0, q * (samples + 1) / samples)
    return max(0.0, 1.0 - (1.0 - q) * (samples + 1) / samples)


def quantile_paths(points: FloatArray, residuals: FloatArray, q: float, samples: int = 0) -> FloatArray:
    """q-quantile forecasts for point forecasts shaped (..., horizon)."""
    horizon = points.shape[-1]
    shift = residual_quantile(residuals[:, :horizon], conformal_level(q, samples))
    out = np.expm1(np.log1p(np.maximum(points, 0.0)) + shift)
    return np.asarray(np.maximum(np.nan_to_num(out, nan=0.0, posinf=0.0), 0.0), dtype=np.float64)
