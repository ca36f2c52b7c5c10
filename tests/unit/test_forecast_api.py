"""The `forecast()` contract the planner codes against, including bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreshard.core.forecasting import Forecast, InsufficientHistory, ScheduledEvent, fit, forecast, predict
from foreshard.core.series import Series

pytestmark = pytest.mark.unit

STEP = 300.0
START = 1_700_000_100.0  # on the 5-minute grid


def series(values: list[float] | np.ndarray, key: str = "k") -> Series:
    return Series(key, START, STEP, np.asarray(values, dtype=np.float64))


def test_a_forecast_starts_where_the_history_ends_with_the_same_step() -> None:
    history = series(np.full(100, 5.0))
    result = forecast(history, 6)
    assert isinstance(result, Forecast)
    assert result.start_s == history.end_s
    assert result.step_s == STEP
    assert len(result.mean) == 6
    assert set(result.quantiles) == {0.5, 0.9, 0.99}
    assert all(len(v) == 6 for v in result.quantiles.values())


def test_a_constant_history_forecasts_that_constant() -> None:
    result = forecast(series(np.full(200, 42.0)), 4)
    assert result.mean == pytest.approx(np.full(4, 42.0))


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ([], "empty"),
        ([5.0, 6.0], "two intervals"),
        ([np.nan] * 50, "nothing observed"),
        ([-1.0, -2.0, np.nan, 4.0], "one usable interval"),
    ],
)
def test_too_little_usable_history_raises_insufficient_history(values: list[float], why: str) -> None:
    with pytest.raises(InsufficientHistory, match="need at least"):
        forecast(series(values), 3)


def test_gaps_negative_counts_and_nan_are_cleaned_not_propagated() -> None:
    values = np.full(300, 10.0)
    values[[5, 50, 51, 52, 299]] = [np.nan, -3.0, np.inf, np.nan, np.nan]
    result = forecast(series(values), 5)
    assert np.all(np.isfinite(result.mean))
    assert result.mean == pytest.approx(np.full(5, 10.0), rel=0.05)


def test_a_horizon_below_one_step_is_refused() -> None:
    with pytest.raises(ValueError, match="horizon_steps"):
        forecast(series(np.ones(50)), 0)


def test_a_fit_can_be_rolled_forward_and_read_for_a_longer_horizon() -> None:
    history = series(np.random.default_rng(1).poisson(20, 400).astype(np.float64))
    fitted = fit(history, 3)
    result = predict(fitted, history, 10)
    assert len(result.mean) == 10
    assert np.all(result.quantiles[0.99] >= result.quantiles[0.9])


def test_a_scheduled_event_multiplies_only_its_window_and_keys() -> None:
    history = series(np.full(300, 10.0), key="shop")
    window = ScheduledEvent("sale", history.end_s + STEP, history.end_s + 3 * STEP, 3.0, frozenset({"shop"}))
    other = ScheduledEvent("elsewhere", history.end_s, history.end_s + 10 * STEP, 5.0, frozenset({"bank"}))
    result = forecast(history, 4, events=[window, other])
    assert result.mean == pytest.approx([10.0, 30.0, 30.0, 10.0], rel=0.01)
    assert result.quantiles[0.9][1] == pytest.approx(3 * result.quantiles[0.9][0], rel=0.01)


counts = st.lists(
    st.one_of(
        st.floats(min_value=-5, max_value=1e6),
        st.integers(0, 50).map(float),
        st.just(float("nan")),
        st.just(float("inf")),
    ),
    min_size=3,
    max_size=400,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=counts, horizon=st.integers(1, 30))
def test_forecasts_are_never_negative_never_nan_and_quantiles_are_monotone(
    values: list[float], horizon: int
) -> None:
    history = series(values)
    try:
        result = forecast(history, horizon, (0.1, 0.5, 0.9, 0.99))
    except InsufficientHistory:
        usable = np.isfinite(history.values) & (history.values >= 0)
        assert usable.sum() < 3
        return
    stacked = np.stack([result.mean, *(result.quantiles[q] for q in (0.1, 0.5, 0.9, 0.99))])
    assert np.all(np.isfinite(stacked))
    assert np.all(stacked >= 0)
    for low, high in ((0.1, 0.5), (0.5, 0.9), (0.9, 0.99)):
        assert np.all(result.quantiles[high] >= result.quantiles[low] - 1e-9)
