"""Model choice by backtest, and intervals calibrated from the backtest's residuals."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core.forecasting import intervals, selection
from foreshard.core.forecasting.models import TSB

pytestmark = pytest.mark.unit

STEP = 1800.0  # 48 steps a day
DAY = 48


def seasonal_counts(days: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rate = 200 + 150 * np.sin(2 * np.pi * np.arange(DAY * days) / DAY)
    return rng.poisson(rate).astype(np.float64)


def test_a_strong_daily_cycle_selects_a_seasonal_model() -> None:
    fitted = selection.fit(seasonal_counts(21), 0, STEP, 4)
    assert any(spec.season in (DAY, 7 * DAY) for spec in fitted.specs), fitted.name


def test_a_random_walk_selects_a_fast_level() -> None:
    rng = np.random.default_rng(5)
    y = np.maximum(1000 + np.cumsum(rng.normal(0, 30, 600)), 0)
    fitted = selection.fit(y, 0, 300.0, 1)
    assert all(spec.alpha >= 0.5 for spec in fitted.specs), fitted.name


def test_intermittent_keys_get_tsb_among_the_candidates() -> None:
    rng = np.random.default_rng(7)
    y = np.where(rng.random(2000) < 0.1, rng.integers(1, 5, 2000), 0).astype(np.float64)
    fitted = selection.fit(y, 0, 300.0, 3)
    assert any(name.startswith(TSB) for name in fitted.scores)


def test_backtest_scores_cover_every_family_and_the_chosen_one_is_the_lowest() -> None:
    fitted = selection.fit(seasonal_counts(10), 0, STEP, 2)
    assert len(fitted.scores) >= 4
    if len(fitted.specs) == 1:
        assert fitted.scores[fitted.name] == min(fitted.scores.values())


def test_seasons_follow_the_step_and_skip_steps_that_do_not_divide_a_day() -> None:
    assert selection.seasons_for(300.0) == [288, 2016]
    assert selection.seasons_for(7000.0) == []


def test_the_residual_table_is_monotone_in_the_level() -> None:
    fitted = selection.fit(seasonal_counts(10), 0, STEP, 3)
    assert np.all(np.diff(fitted.residuals, axis=0) >= -1e-12)


@pytest.mark.parametrize("seed", [11, 12])
def test_p90_intervals_cover_about_ninety_percent_on_fresh_data(seed: int) -> None:
    y = seasonal_counts(40, seed)
    split = 30 * DAY
    fitted = selection.fit(y[:split], 0, STEP, 2)
    origins = np.arange(split, len(y) - 2, dtype=np.int64)
    points = selection.combined_paths(y, fitted, 0, origins, 2)
    upper = intervals.quantile_paths(points, fitted.residuals, 0.9, fitted.samples)
    actual = y[origins[:, None] + np.arange(2)]
    assert 0.83 <= float(np.mean(actual <= upper)) <= 0.97


def test_few_residuals_widen_the_conformal_level() -> None:
    assert intervals.conformal_level(0.9, 9) == pytest.approx(1.0)
    assert intervals.conformal_level(0.9, 1000) == pytest.approx(0.9009)
    assert intervals.conformal_level(0.1, 9) == pytest.approx(0.0)


def test_a_quantile_level_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="quantile levels"):
        intervals.residual_quantile(np.zeros((201, 2)), 1.5)
