"""Candidate models: causal, vectorised over origins, and right on series whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core.forecasting import models
from foreshard.core.forecasting.models import LEVEL, SNAIVE, TSB, Spec

pytestmark = pytest.mark.unit

DAY = 24


def daily(days: int, noise: float = 0.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = 100 + 50 * np.sin(2 * np.pi * np.arange(DAY) / DAY)
    return np.tile(shape, days) + noise * rng.standard_normal(DAY * days)


def test_smoothing_with_alpha_one_is_the_last_value() -> None:
    y = np.array([3.0, 7.0, 1.0, 9.0])
    assert np.allclose(models.smooth(y, 1.0), y)


def test_smoothing_matches_the_recursive_definition() -> None:
    y = np.array([10.0, 20.0, 0.0, 5.0])
    expected, level = [], y[0]
    for value in y:
        level = level + 0.3 * (value - level)
        expected.append(level)
    assert np.allclose(models.smooth(y, 0.3), expected)


def test_level_paths_only_use_data_before_the_origin() -> None:
    y = daily(6, noise=5.0)
    origins = np.array([100, 120], dtype=np.int64)
    spec = Spec(LEVEL, log=True, alpha=0.2)
    before = models.level_paths(y, spec, None, 0, origins, 4)
    changed = y.copy()
    changed[120:] = 1e6  # the future of the second origin
    after = models.level_paths(changed, spec, None, 0, origins, 4)
    assert np.allclose(before, after)


def test_a_seasonal_level_model_reproduces_a_clean_daily_cycle() -> None:
    y = daily(8)
    phases = np.arange(len(y), dtype=np.int64)
    profile = models.estimate_profile(y, phases, DAY, 7)
    assert profile is not None
    origins = np.array([len(y) - DAY], dtype=np.int64)
    forecast = models.level_paths(y, Spec(LEVEL, alpha=0.5, season=DAY), profile, 0, origins, DAY)
    assert np.allclose(forecast[0], y[-DAY:], atol=1e-6)


def test_a_profile_needs_two_whole_seasons() -> None:
    y = daily(1)
    assert models.estimate_profile(y, np.arange(len(y), dtype=np.int64), DAY, 7) is None


def test_seasonal_naive_repeats_the_previous_season_at_every_step() -> None:
    y = np.arange(3 * DAY, dtype=np.float64)
    origins = np.array([2 * DAY], dtype=np.int64)
    paths = models.snaive_paths(y, DAY, origins, DAY + 2)
    assert np.array_equal(paths[0, :DAY], y[DAY : 2 * DAY])
    assert np.array_equal(paths[0, DAY:], y[DAY : DAY + 2])  # beyond a season: the same last season again


def test_tsb_forecasts_rate_times_size_for_intermittent_demand() -> None:
    y = np.tile([0.0, 0.0, 0.0, 4.0], 200)  # a quarter of intervals carry 4 messages
    paths = models.tsb_paths(y, Spec(TSB, alpha=0.1, beta=0.05), np.array([len(y)], dtype=np.int64), 3)
    assert paths[0] == pytest.approx([1.0, 1.0, 1.0], abs=0.15)


def test_tsb_on_a_series_without_any_demand_forecasts_zero() -> None:
    paths = models.tsb_paths(np.zeros(50), Spec(TSB), np.array([50], dtype=np.int64), 2)
    assert np.array_equal(paths, np.zeros((1, 2)))


def test_a_burst_reset_moves_the_level_at_once() -> None:
    z = np.log1p(np.array([10.0] * 20 + [1000.0]))
    plain = models.smooth(z, 0.1)[-1]
    reset = models.smooth_with_resets(z, 0.1, 1.0)[-1]
    assert reset == pytest.approx(np.log1p(1000.0))
    assert plain < np.log1p(30.0)


def test_spec_names_say_what_the_model_is() -> None:
    assert Spec(LEVEL, log=True, season=288, alpha=0.1).name == "level(log,a=0.1,season=288)"
    assert Spec(SNAIVE, season=48).name == "snaive(48)"
