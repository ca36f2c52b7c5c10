"""The queue's forecast band for the current step, summed over its per-key forecasts."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core import demand
from foreshard.core.forecasting import Forecast


def part(key: str, mean: list[float], low: list[float], high: list[float]) -> Forecast:
    bands = {0.1: np.array(low), 0.9: np.array(high)}
    return Forecast(key, 100.0, 10.0, np.array(mean), bands, "m", True)


def test_the_band_is_the_sum_of_the_parts_at_the_step_that_holds_now_in_messages_per_second() -> None:
    parts = [part("a", [10, 20, 30], [5, 10, 15], [20, 40, 60]), part("b", [0, 10, 0], [0, 0, 0], [0, 30, 0])]
    assert demand.band_at(parts, 115.0, 0.1, 0.9) == pytest.approx((1.0, 3.0, 7.0))
    assert demand.band_at(parts, 95.0, 0.1, 0.9) == pytest.approx((0.5, 1.0, 2.0))  # before: the first step


def test_no_band_beyond_the_path_without_parts_or_without_the_quantiles() -> None:
    parts = [part("a", [10], [5], [20])]
    assert demand.band_at(parts, 111.0, 0.1, 0.9) is None
    assert demand.band_at([], 100.0, 0.1, 0.9) is None
    assert demand.band_at(parts, 100.0, 0.1, 0.99) is None
