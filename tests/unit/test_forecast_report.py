"""What an OrderParamForecast's status says: bounded points, the why, accuracy carried in status."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core.forecasting import Forecast, fit, report
from foreshard.core.series import Series

pytestmark = pytest.mark.unit

STEP = 300.0
START = 1_700_000_100.0


def path(length: int) -> Forecast:
    mean = np.linspace(300.0, 600.0, length)
    bands = {0.1: mean * 0.5, 0.5: mean, 0.9: mean * 1.5, 0.99: mean * 2.0}
    return Forecast("k", START, STEP, mean, bands, "m")


def test_points_are_rates_within_the_horizon_with_ordered_bands() -> None:
    points = report.horizon_points(path(24), START, 900.0)
    assert len(points) == 3
    assert points[0]["mean"] == pytest.approx(1.0)
    assert all(p["p10"] <= p["p50"] <= p["p90"] <= p["p99"] for p in points)


def test_long_horizons_are_bucketed_under_the_bound_without_narrowing_a_band() -> None:
    forecast = path(1000)
    points = report.horizon_points(forecast, START, 1000 * STEP)
    assert len(points) <= report.MAX_POINTS
    assert max(p["p99"] for p in points) == pytest.approx(forecast.quantile(0.99).max() / STEP, rel=1e-3)
    assert min(p["p10"] for p in points) == pytest.approx(forecast.quantile(0.1).min() / STEP, rel=1e-3)


def test_why_names_the_model_and_ranks_the_candidates_by_backtest_error() -> None:
    sentence, candidates = report.why("level(log)", {"snaive(288)": 4.0, "level(log)": 2.0, "tsb": 3.0}, 400)
    assert sentence.startswith("level(log): lowest mean absolute error") and "400 origins" in sentence
    assert [c["model"] for c in candidates] == ["level(log)", "tsb", "snaive(288)"]


def seasonal_history(days: int = 4, seed: int = 3) -> Series:
    steps = np.arange(days * 288)
    rng = np.random.default_rng(seed)
    values = rng.poisson(20 + 15 * np.sin(2 * np.pi * steps / 288)).astype(float)
    return Series("k", START, STEP, values)


def test_a_fresh_fit_is_scored_on_its_one_step_forecasts_of_the_recent_history() -> None:
    history = seasonal_history()
    accuracy = report.replay_fit(history, fit(history, 12))
    status = accuracy.to_status(None)
    assert status["replayed"] == report.REPLAY == status["observations"]
    # a smoothed one-step forecast of a slow daily wave beats last-day's value on Poisson noise
    assert 0 < status["mase"] < 1.0
    assert 0.7 <= status["coverage90"] <= 1.0


def test_accuracy_survives_a_round_trip_through_status_and_scores_a_realised_interval() -> None:
    history = seasonal_history()
    before = report.replay_fit(history, fit(history, 12)).to_status(
        {"time": report.iso(history.end_s - STEP), "mean": 1e6, "p90": 2e6}
    )
    restored = report.Accuracy.from_status(before)
    assert restored is not None
    after, scored = report.score(restored, before["pending"], history)
    assert scored
    status = after.to_status(None)
    assert status["observations"] == before["observations"] + 1
    # a forecast of a million messages for an interval of ~20 makes the error jump
    assert status["meanAbsoluteError"] > before["meanAbsoluteError"] * 10


def test_a_pending_forecast_whose_interval_is_not_realised_yet_is_kept() -> None:
    history = seasonal_history(2)
    state = report.replay_fit(history, fit(history, 12))
    later = {"time": report.iso(history.end_s), "mean": 5.0, "p90": 9.0}
    assert report.score(state, later, history) == (state, False)
