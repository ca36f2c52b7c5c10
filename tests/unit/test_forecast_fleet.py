"""Many keys at once: the vectorised cycle agrees with the one-key forecaster."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core.forecasting import fleet, predict, selection
from foreshard.core.forecasting.models import LEVEL
from foreshard.core.series import Series

pytestmark = pytest.mark.unit

STEP = 1800.0
DAY = 48
QUANTILES = (0.5, 0.9, 0.99)


def history(seed: int, days: int = 21) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rate = (100 + 20 * seed) * (1.5 + np.sin(2 * np.pi * np.arange(DAY * days) / DAY))
    return rng.poisson(rate).astype(np.float64)


def build(histories: list[np.ndarray], horizon: int) -> tuple[fleet.Fleet, list[selection.Fitted]]:
    n = len(histories[0])
    fits = [selection.fit(y, 0, STEP, horizon) for y in histories]
    members = [fleet.key_model(f, y, n, QUANTILES) for f, y in zip(fits, histories, strict=True)]
    return fleet.assemble([f"k{i}" for i in range(len(histories))], members, n, QUANTILES), fits


def test_the_fleet_forecast_equals_the_single_key_forecast_for_level_models() -> None:
    histories = [history(seed) for seed in range(3)]
    built, fits = build(histories, 4)
    point, bands = fleet.predict(built, 4)
    for row, (fitted, y) in enumerate(zip(fits, histories, strict=True)):
        if len(fitted.specs) != 1 or fitted.specs[0].kind != LEVEL:
            continue
        single = predict(fitted, Series("k", 0.0, STEP, y), 4, QUANTILES)
        assert point[row] == pytest.approx(single.mean, rel=1e-6)
        assert bands[row, 1] == pytest.approx(single.quantiles[0.9], rel=1e-6)


def test_an_update_moves_the_level_toward_the_new_observation_and_advances_the_clock() -> None:
    built, _ = build([history(1)], 2)
    before, _ = fleet.predict(built, 1)
    after, _ = fleet.predict(fleet.update(built, np.array([before[0, 0] * 5])), 1)
    assert fleet.update(built, np.array([1.0])).next_index == built.next_index + 1
    higher, _ = fleet.predict(fleet.update(built, np.array([before[0, 0]])), 1)
    assert after[0, 0] > higher[0, 0]


def test_a_missing_observation_keeps_the_level() -> None:
    built, _ = build([history(2)], 2)
    assert fleet.update(built, np.array([np.nan])).level == pytest.approx(built.level)


def test_staggered_refits_touch_every_key_once_per_period() -> None:
    rows = np.concatenate([fleet.due_for_refit(10, cycle, 4) for cycle in range(4)])
    assert sorted(rows.tolist()) == list(range(10))


def test_replacing_a_key_changes_only_that_key() -> None:
    histories = [history(seed) for seed in range(3)]
    built, fits = build(histories, 2)
    shifted = fleet.key_model(fits[1], histories[1] * 3, len(histories[1]), QUANTILES)
    swapped = fleet.replace_key(built, 1, shifted)
    before, _ = fleet.predict(built, 2)
    after, _ = fleet.predict(swapped, 2)
    assert after[[0, 2]] == pytest.approx(before[[0, 2]])
    assert after[1, 0] > 2 * before[1, 0]


def test_fleet_quantiles_are_monotone_and_never_negative() -> None:
    built, _ = build([history(seed) for seed in range(4)], 3)
    _, bands = fleet.predict(built, 6)
    assert np.all(bands >= 0)
    assert np.all(np.diff(bands, axis=1) >= -1e-9)
