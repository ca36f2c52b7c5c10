"""Statsmodels candidates (Holt-Winters, ARIMA, SARIMAX): filters that match statsmodels, and
fits that are bounded, deterministic and quiet (pytest turns any warning into an error)."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.tsa.arima.model import ARIMA as StatsmodelsARIMA
from statsmodels.tsa.holtwinters import ExponentialSmoothing

from foreshard.core.forecasting import statistical
from foreshard.core.forecasting.statistical import ARIMA, ETS, SARIMAX, StatSpec

pytestmark = pytest.mark.unit

DAY = 48


def seasonal_log_counts(days: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Counts with a daily cycle, and the cycle's log1p shape (de-meaned) by phase."""
    rng = np.random.default_rng(seed)
    shape = np.sin(2 * np.pi * np.arange(DAY) / DAY)
    rate = np.exp(4.0 + 0.6 * np.tile(shape, days))
    return rng.poisson(rate).astype(np.float64), 0.6 * shape


def ar1_counts(n: int, phi: float, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.zeros(n)
    for i in range(1, n):
        z[i] = phi * z[i - 1] + rng.normal(0, 0.4)
    return np.round(np.expm1(4.0 + z))


def test_the_holt_winters_filter_reproduces_statsmodels_one_step_forecasts() -> None:
    y, profile = seasonal_log_counts(10)
    z = np.log1p(y)
    alpha, beta, gamma, phi = 0.3, 0.05, 0.1, 0.9
    reference = ExponentialSmoothing(
        z,
        trend="add",
        damped_trend=True,
        seasonal="add",
        seasonal_periods=DAY,
        initialization_method="known",
        initial_level=float(np.mean(z[:DAY])),
        initial_trend=0.0,
        initial_seasonal=profile,
    ).fit(
        smoothing_level=alpha,
        smoothing_trend=beta,
        smoothing_seasonal=gamma,
        damping_trend=phi,
        optimized=False,
    )
    spec = StatSpec(ETS, DAY, params=(alpha, beta, gamma, phi))
    origins = np.arange(1, len(y), dtype=np.int64)
    ours = statistical.ets_paths(y, spec, profile, 0, origins, 1)[:, 0]
    expected = np.maximum(np.expm1(np.asarray(reference.fittedvalues)[1:]), 0.0)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)


def test_the_arima_paths_equal_statsmodels_forecasts_from_the_same_origin() -> None:
    y = ar1_counts(800, 0.8)
    spec = statistical.fit_arima(np.log1p(y[:600]), (2, 0, 1), None)
    assert spec is not None and spec.kind == ARIMA
    origin = 700
    ours = statistical.arima_paths(y, spec, {}, 0, np.array([origin], dtype=np.int64), 6)[0]
    start = max(0, origin - statistical.ARIMA_BURN_IN)
    z = np.log1p(y[start:origin])
    mean = spec.coefficients[0]
    model = StatsmodelsARIMA(
        z - mean, order=(2, 0, 1), trend="n", enforce_stationarity=False, enforce_invertibility=False
    )
    expected = np.expm1(np.asarray(model.filter(np.asarray(spec.params)).forecast(6)) + mean)
    np.testing.assert_allclose(ours, expected, rtol=1e-8)


def test_sarimax_forecasts_follow_the_profile_it_regresses_on() -> None:
    y, profile = seasonal_log_counts(12)
    spec = statistical.fit_arima(
        np.log1p(y[: 10 * DAY]), (1, 0, 1), np.tile(profile, 10)[:, None], seasons=(DAY,)
    )
    assert spec is not None and spec.kind == SARIMAX
    assert spec.coefficients[1] == pytest.approx(1.0, abs=0.15)  # the profile's amplitude, learnt
    path = statistical.arima_paths(y, spec, {DAY: profile}, 0, np.array([10 * DAY], dtype=np.int64), DAY)[0]
    assert np.corrcoef(np.log1p(path), profile)[0, 1] > 0.95


def test_a_mean_reverting_series_is_forecast_better_by_arima_than_by_the_last_value() -> None:
    y = ar1_counts(1500, 0.6)
    spec = statistical.fit_arima(np.log1p(y[:1000]), (1, 0, 1), None)
    assert spec is not None
    origins = np.arange(1000, 1490, dtype=np.int64)
    actual = y[origins[:, None] + np.arange(6)]
    arima = statistical.arima_paths(y, spec, {}, 0, origins, 6)
    naive = np.repeat(y[origins - 1][:, None], 6, axis=1)
    assert np.mean(np.abs(arima - actual)) < 0.85 * np.mean(np.abs(naive - actual))


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_fits_are_deterministic_and_quiet_on_noisy_short_series(seed: int) -> None:
    rng = np.random.default_rng(seed)
    z = np.log1p(rng.poisson(3, 60).astype(np.float64) * (rng.random(60) < 0.5))

    def fits() -> list[StatSpec | None]:
        arima = [statistical.fit_arima(z, order, None) for order in statistical.ARIMA_ORDERS]
        return [statistical.fit_ets(z, None, 0, 0), *arima]

    assert fits() == fits()


def test_too_short_a_history_gets_no_statsmodels_fit() -> None:
    short = np.log1p(np.arange(statistical.MIN_FIT - 1, dtype=np.float64))
    assert statistical.fit_ets(short, None, 0, 0) is None
    assert statistical.fit_arima(short, (1, 0, 1), None) is None


def test_a_seasonal_holt_winters_fit_needs_two_seasons() -> None:
    y, profile = seasonal_log_counts(3)
    assert statistical.fit_ets(np.log1p(y[: 2 * DAY - 1]), profile, 0, 0) is None
    assert statistical.fit_ets(np.log1p(y), profile, 0, 0) is not None


def test_explosive_arma_parameters_are_refused() -> None:
    assert not statistical._stable(np.array([1.2, 0.1, 1.0]), (1, 0, 1))  # AR root inside the unit circle
    assert not statistical._stable(np.array([0.5, -1.5, 1.0]), (1, 0, 1))  # MA not invertible
    assert statistical._stable(np.array([0.5, -0.3, 1.0]), (1, 0, 1))


def test_names_say_family_orders_and_profiles() -> None:
    assert StatSpec(ETS, 288).name == "ets(log,add,damped,season=288)"
    assert StatSpec(ARIMA, order=(1, 1, 1)).name == "arima(log,1,1,1)"
    sarimax = StatSpec(SARIMAX, order=(2, 0, 1), seasons=(288, 2016))
    assert sarimax.name == "sarimax(log,2,0,1,profiles=288+2016)"
