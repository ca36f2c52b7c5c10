"""Statsmodels candidates for tracked keys: Holt-Winters (ETS) and ARIMA / SARIMAX.

    training history --fit (statsmodels, bounded window, bounded iterations)--> fixed parameters
    fixed parameters + any history --causal filter--> state after every interval
    states at the origins --> forecasts for steps 1..h at every origin at once

Parameters are estimated once per refit on at most FIT_WINDOW intervals before the validation
window; the backtest and the roll-forward between refits then run the model as a filter with
those parameters (no refit per origin), over at most FILTER_WINDOW intervals before the first
origin. That keeps a fit to a fraction of a second and makes it deterministic: statsmodels'
optimisers start from fixed values and the data is the only input. Warnings from the optimiser
(non-convergence, non-stationary starting values) are expected on short or noisy series and are
caught: a poor fit simply loses the backtest.

Both families work on log1p(counts), where bursts are closer to additive. The seasonal profiles
(`models.estimate_profile`) seed Holt-Winters' seasonal state and are SARIMAX's regressors, so
a season of 288 or 2016 steps costs nothing to estimate.

These fits cost tens to hundreds of milliseconds per series: the operator runs them for tracked
series only (`selection.fit(..., statistical=True)`); the 10k-key fleet never does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from foreshard.core.forecasting import models
from foreshard.core.forecasting.models import IntArray
from foreshard.core.series import FloatArray

ETS = "ets"  # additive Holt-Winters, damped trend, optional additive season
ARIMA = "arima"  # ARIMA(p,d,q) on log1p counts
SARIMAX = "sarimax"  # ARIMA errors around the seasonal profiles as regressors
FIT_WINDOW = 2016  # intervals a fit sees at most (a week of 5-minute steps)
FILTER_WINDOW = 4032  # intervals a filter runs over before the first origin (burn-in)
MAX_ITER = 60  # optimiser iterations per fit
ARIMA_BURN_IN = 576  # ARMA states forget their start within a few dozen steps
MIN_FIT = 24  # intervals below which no statsmodels fit is attempted
ARIMA_ORDERS = ((1, 0, 1), (2, 0, 1), (1, 1, 1))


@dataclass(frozen=True)
class StatSpec:
    """A fitted statsmodels candidate: family, season, order, and its fixed parameters."""

    kind: str
    season: int = 0  # ETS: seasonal period in steps (0 = none)
    order: tuple[int, int, int] = (0, 0, 0)  # (S)ARIMA(X)
    params: tuple[float, ...] = ()
    seasons: tuple[int, ...] = ()  # SARIMAX: profile season lengths used as regressors
    coefficients: tuple[float, ...] = ()  # (S)ARIMA(X): constant (d = 0), then one per profile

    @property
    def name(self) -> str:
        if self.kind == ETS:
            season = f",season={self.season}" if self.season else ""
            return f"ets(log,add,damped{season})"
        p, d, q = self.order
        if self.kind == SARIMAX:
            return f"sarimax(log,{p},{d},{q},profiles={'+'.join(str(s) for s in self.seasons)})"
        return f"arima(log,{p},{d},{q})"


@contextmanager
def quiet() -> Iterator[None]:
    """One BLAS thread, no warnings, for the span of a statsmodels call.

    Optimiser warnings are expected on noisy series (pytest runs with warnings as errors). BLAS
    threads on these small matrices cost far more than they save: one fit with every candidate
    took 8.5 s of CPU (72 s wall on a busy 2-core machine) with OpenBLAS's default threads and
    0.75 s with one.
    """
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), np.errstate(all="ignore"), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore")
        yield


def fit_ses(y: FloatArray) -> float | None:
    """Simple exponential smoothing's level parameter, fitted in-sample by statsmodels on raw counts."""
    from statsmodels.tsa.holtwinters import SimpleExpSmoothing

    if len(y) < 3 or float(np.ptp(y)) == 0.0:
        return None
    with quiet():
        result = SimpleExpSmoothing(y, initialization_method="estimated").fit()
    alpha = float(result.params["smoothing_level"])
    return float(np.clip(alpha, 1e-4, 1.0)) if np.isfinite(alpha) else None


# ---- Holt-Winters -------------------------------------------------------------------------------


def _seasonal_start(profile: FloatArray | None, phase_base: int, start: int) -> tuple[int, FloatArray]:
    if profile is None:
        return 0, np.zeros(1)
    m = len(profile)
    return m, np.asarray(profile[(phase_base + start + np.arange(m)) % m], dtype=np.float64)


def fit_ets(z: FloatArray, profile: FloatArray | None, phase_base: int, start: int) -> StatSpec | None:
    """Holt-Winters parameters for log1p counts `z` (which start at absolute index `start`)."""
    m, initial = _seasonal_start(profile, phase_base, start)
    if len(z) < max(MIN_FIT, 2 * m):
        return None
    first = z[: m or MIN_FIT]
    with quiet():
        return _ets_spec(z, m, initial, first)


def _ets_spec(z: FloatArray, m: int, initial: FloatArray, first: FloatArray) -> StatSpec | None:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    model = ExponentialSmoothing(
        z,
        trend="add",
        damped_trend=True,
        seasonal="add" if m else None,
        seasonal_periods=m or None,
        initialization_method="known",
        initial_level=float(np.mean(first)),
        initial_trend=0.0,
        initial_seasonal=initial if m else None,
    )
    result = model.fit(optimized=True, use_brute=False, minimize_kwargs={"options": {"maxiter": MAX_ITER}})
    p = result.params
    values = [
        p["smoothing_level"],
        p["smoothing_trend"],
        p.get("smoothing_seasonal", 0.0),
        p["damping_trend"],
    ]
    if not all(np.isfinite(v) for v in values):
        return None
    return StatSpec(ETS, m, params=tuple(float(np.clip(v, 0.0, 1.0)) for v in values))


def ets_paths(
    y: FloatArray,
    spec: StatSpec,
    profile: FloatArray | None,
    phase_base: int,
    origins: IntArray,
    horizon: int,
) -> FloatArray:
    """Forecasts (origins x horizon, counts) of Holt-Winters with fixed parameters, filtered from
    FILTER_WINDOW intervals before the first origin."""
    alpha, beta, gamma, phi = spec.params
    start = max(0, int(origins[0]) - FILTER_WINDOW)
    z = np.log1p(y[start:])
    m, season = _seasonal_start(profile if spec.season else None, phase_base, start)
    season = season.copy()
    level = float(np.mean(z[: m or MIN_FIT]))
    trend = 0.0
    levels, trends = np.empty(len(z)), np.empty(len(z))
    seasonal = np.empty(len(z))  # the seasonal state of the phase just observed, after its update
    for i, value in enumerate(z.tolist()):
        s = season[i % m] if m else 0.0
        damped = level + phi * trend
        new_level = alpha * (value - s) + (1.0 - alpha) * damped
        trend = beta * (new_level - level) + (1.0 - beta) * phi * trend
        if m:
            season[i % m] = gamma * (value - damped) + (1.0 - gamma) * s
            seasonal[i] = season[i % m]
        level = new_level
        levels[i], trends[i] = level, trend
    local = origins - start
    damping = np.cumsum(phi ** np.arange(1, horizon + 1))
    path = levels[local - 1][:, None] + trends[local - 1][:, None] * damping[None, :]
    if m:
        targets = models.target_index(local, horizon)
        source = targets - m * np.ceil((targets - local[:, None] + 1) / m).astype(np.int64)
        initial = _seasonal_start(profile, phase_base, start)[1]
        path += np.where(source >= 0, seasonal[np.clip(source, 0, None)], initial[targets % m])
    return models.untransform(path, True)


# ---- (S)ARIMA(X) --------------------------------------------------------------------------------


def regressors(
    profiles: Mapping[int, FloatArray], seasons: tuple[int, ...], phase_base: int, first: int, count: int
) -> FloatArray | None:
    """Profile values (count x seasons) at absolute indices phase_base + first + 0..count-1."""
    if not seasons:
        return None
    index = phase_base + first + np.arange(count)
    return np.stack([profiles[s][index % s] for s in seasons], axis=1)


def _arma(w: FloatArray, order: tuple[int, int, int]) -> Any:
    from statsmodels.tsa.arima.model import ARIMA as Model

    # no constraint is enforced, so filtering with any fitted parameters works; `_stable` refuses
    # explosive fits before they get here
    return Model(w, order=order, trend="n", enforce_stationarity=False, enforce_invertibility=False)


def _design(order: tuple[int, int, int], exog: FloatArray | None, count: int) -> FloatArray:
    """Regressors: a constant (a mean; none when differenced) and the seasonal profiles."""
    columns = [] if order[1] else [np.ones(count)]
    if exog is not None:
        columns += [exog[:count, i] for i in range(exog.shape[1])]
    return np.stack(columns, axis=1) if columns else np.zeros((count, 0))


def fit_arima(
    z: FloatArray, order: tuple[int, int, int], exog: FloatArray | None, seasons: tuple[int, ...] = ()
) -> StatSpec | None:
    """Regression with ARIMA errors in two steps: least squares for the constant and the profile
    coefficients (on differences when d = 1), then Hannan-Rissanen for the ARMA part of what is
    left. Both are closed-form regressions, so the cost is bounded (no iterative optimiser) and
    the result deterministic; on these series the estimates are close to maximum likelihood."""
    if len(z) < MIN_FIT:
        return None
    design = _design(order, exog, len(z))
    target, regressors_ = (np.diff(z), np.diff(design, axis=0)) if order[1] else (z, design)
    with quiet():
        try:
            beta = np.linalg.lstsq(regressors_, target, rcond=None)[0] if design.shape[1] else np.zeros(0)
            w = z - design @ beta
            params = np.asarray(_arma(w, order).fit(method="hannan_rissanen").params, dtype=np.float64)
            if not (np.all(np.isfinite(params)) and _stable(params, order)):
                params = _likelihood_fit(w, order)
        except (ValueError, np.linalg.LinAlgError):
            return None
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(beta)) and _stable(params, order)):
        return None
    kind = SARIMAX if seasons else ARIMA
    return StatSpec(
        kind, order=order, params=tuple(params.tolist()), seasons=seasons, coefficients=tuple(beta.tolist())
    )


def _likelihood_fit(w: FloatArray, order: tuple[int, int, int]) -> FloatArray:
    """Maximum likelihood with stationarity and invertibility enforced, a bounded number of
    iterations: the fallback when the regression estimates are explosive (an over-parameterised
    order, such as ARMA(2,1) on an AR(1) series, can make them so)."""
    from statsmodels.tsa.arima.model import ARIMA as Model

    model = Model(w, order=order, trend="n")
    result = model.fit(method="statespace", method_kwargs={"maxiter": MAX_ITER, "disp": False})
    return np.asarray(result.params, dtype=np.float64)


def _stable(params: FloatArray, order: tuple[int, int, int]) -> bool:
    """AR part stationary and MA part invertible: otherwise forecasts or filters diverge."""
    p, _, q = order
    ar, ma = params[:p], params[p : p + q]
    roots_ar = np.abs(np.roots(np.r_[1.0, -ar][::-1])) if p else np.ones(0) * 2
    roots_ma = np.abs(np.roots(np.r_[1.0, ma][::-1])) if q else np.ones(0) * 2
    return bool(np.all(roots_ar > 1.001) and np.all(roots_ma > 1.001))


def arima_paths(
    y: FloatArray,
    spec: StatSpec,
    profiles: Mapping[int, FloatArray],
    phase_base: int,
    origins: IntArray,
    horizon: int,
) -> FloatArray:
    """Forecasts (origins x horizon, counts) from the Kalman filter's predicted states: the ARMA
    part forecast from each origin's state, plus the regression on the known future profile."""
    start = max(0, int(origins[0]) - ARIMA_BURN_IN)
    z = np.log1p(y[start:])
    exog = regressors(profiles, spec.seasons, phase_base, start, len(z) + horizon + 1)
    design = _design(spec.order, exog, len(z) + horizon + 1)
    beta = np.asarray(spec.coefficients)
    mean = design @ beta if len(beta) else np.zeros(len(design))
    local = origins - start
    path = np.empty((len(origins), horizon))
    with quiet():
        model = _arma(z - mean[: len(z)], spec.order)
        filtered = model.filter(np.asarray(spec.params), return_ssm=True)
        states = np.asarray(filtered.predicted_state)  # (k, n + 1): a_{t|t-1}
        observe = _fixed(model.ssm["design"])
        transition = _fixed(model.ssm["transition"])
        state = states[:, local]
        for k in range(horizon):
            path[:, k] = (observe @ state)[0]
            state = transition @ state
    path += mean[models.target_index(local, horizon)]
    return models.untransform(path, True)


def _fixed(matrix: Any) -> FloatArray:
    """A time-invariant system matrix (statsmodels keeps a trailing time axis of length 1)."""
    array = np.asarray(matrix, dtype=np.float64)
    return array[..., 0] if array.ndim == 3 else array
