"""Feedback: rolling realised error and coverage, and the trust verdict for the planner."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core.forecasting import feedback
from foreshard.core.forecasting.feedback import Feedback

pytestmark = pytest.mark.unit


def run(actuals: np.ndarray, point: float, upper: float, reference: float, keys: int = 1) -> Feedback:
    state = Feedback.empty(keys)
    for value in actuals:
        state = feedback.observe(
            state, np.full(keys, value), np.full(keys, point), np.full(keys, upper), np.full(keys, reference)
        )
    return state


def test_a_new_series_is_warming_up() -> None:
    trusted, reasons = feedback.verdict(run(np.full(3, 10.0), 10.0, 12.0, 8.0))
    assert reasons == ["WarmingUp"]
    assert trusted.tolist() == [True]


def test_a_forecast_worse_than_its_reference_is_not_trusted() -> None:
    actuals = np.random.default_rng(1).normal(100, 5, 200)
    trusted, reasons = feedback.verdict(run(actuals, 60.0, 200.0, 100.0))
    assert reasons == ["WorseThanBaseline"]
    assert trusted.tolist() == [False]


def test_intervals_breached_too_often_are_not_trusted() -> None:
    actuals = np.random.default_rng(2).normal(100, 5, 200)
    trusted, reasons = feedback.verdict(run(actuals, 100.0, 95.0, 80.0))
    assert reasons == ["IntervalsTooNarrow"]
    assert not trusted[0]


def test_a_good_forecast_is_trusted_and_its_coverage_is_measured() -> None:
    actuals = np.random.default_rng(3).normal(100, 5, 500)
    state = run(actuals, 100.0, 100.0 + 1.2816 * 5, 90.0)
    trusted, reasons = feedback.verdict(state)
    assert reasons == ["ForecastTrusted"]
    assert trusted.tolist() == [True]
    assert state.coverage[0] == pytest.approx(0.9, abs=0.06)


def test_missing_actuals_change_nothing() -> None:
    before = run(np.full(20, 10.0), 10.0, 12.0, 9.0)
    after = feedback.observe(before, np.array([np.nan]), np.array([0.0]), np.array([0.0]), np.array([0.0]))
    assert after == before or np.array_equal(after.error, before.error)
    assert after.observations[0] == before.observations[0]
