"""Scheduled events: given multipliers over a window and key set, or learnt from the past."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core.forecasting.events import ScheduledEvent, learn_multiplier, multipliers
from foreshard.core.series import Series

pytestmark = pytest.mark.unit

DAY = 86_400.0
STEP = 3600.0


def test_an_event_covering_half_a_step_applies_half_its_effect() -> None:
    event = ScheduledEvent("peak", 1800.0, 7200.0, 3.0)
    assert multipliers("any", 0.0, STEP, 3, [event]) == pytest.approx([2.0, 3.0, 1.0])


def test_overlapping_events_multiply() -> None:
    events = [ScheduledEvent("a", 0.0, STEP, 2.0), ScheduledEvent("b", 0.0, STEP, 1.5)]
    assert multipliers("k", 0.0, STEP, 1, events) == pytest.approx([3.0])


def test_an_event_for_other_keys_leaves_this_key_alone() -> None:
    event = ScheduledEvent("a", 0.0, STEP, 9.0, frozenset({"other"}))
    assert multipliers("k", 0.0, STEP, 2, [event]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize(
    ("start", "end", "factor"), [(10.0, 5.0, 2.0), (0.0, 1.0, -1.0), (0.0, 1.0, float("nan"))]
)
def test_an_event_with_an_empty_window_or_a_bad_multiplier_is_refused(
    start: float, end: float, factor: float
) -> None:
    with pytest.raises(ValueError, match="event"):
        ScheduledEvent("bad", start, end, factor)


def test_a_recurring_event_multiplier_is_learnt_from_past_occurrences() -> None:
    values = np.full(24 * 10, 100.0)
    occurrences = []
    for day in (3, 6, 9):
        values[24 * day + 12 : 24 * day + 14] = 250.0
        occurrences.append((day * DAY + 12 * STEP, day * DAY + 14 * STEP))
    history = Series("k", 0.0, STEP, values)
    assert learn_multiplier(history, occurrences) == pytest.approx(2.5)


def test_occurrences_outside_the_history_teach_nothing() -> None:
    history = Series("k", 0.0, STEP, np.full(48, 10.0))
    assert learn_multiplier(history, [(100 * DAY, 100 * DAY + STEP), (0.0, STEP)]) == 1.0
