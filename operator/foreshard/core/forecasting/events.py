"""Scheduled events (campaigns, known peaks) as multipliers over a window and a set of keys.

An event is given by the user (`ScheduledEvent`), or its multiplier is learnt from past
occurrences of a named recurring event (`learn_multiplier`): the ratio of what arrived during
each past window to what arrived in the same window one season earlier, which is what a
seasonal forecast would have predicted had it not known about the event.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from foreshard.core.series import FloatArray, Series


@dataclass(frozen=True)
class ScheduledEvent:
    name: str
    start_s: float
    end_s: float
    multiplier: float
    keys: frozenset[str] | None = None  # None: every key

    def __post_init__(self) -> None:
        if not self.end_s > self.start_s:
            raise ValueError(f"event {self.name!r}: end ({self.end_s}) must be after start ({self.start_s})")
        if not (np.isfinite(self.multiplier) and self.multiplier >= 0):
            raise ValueError(f"event {self.name!r}: multiplier must be a finite number >= 0")

    def applies_to(self, key: str) -> bool:
        return self.keys is None or key in self.keys


def multipliers(
    key: str, start_s: float, step_s: float, steps: int, events: Iterable[ScheduledEvent]
) -> FloatArray:
    """Per-step factor: the product of every event that covers part of the step, weighted by overlap."""
    starts = start_s + step_s * np.arange(steps)
    factor = np.ones(steps)
    for event in events:
        if not event.applies_to(key):
            continue
        overlap = np.clip(
            np.minimum(starts + step_s, event.end_s) - np.maximum(starts, event.start_s), 0, step_s
        )
        share = overlap / step_s
        factor *= 1.0 + share * (event.multiplier - 1.0)
    return factor


def learn_multiplier(
    history: Series, occurrences: Sequence[tuple[float, float]], season_s: float = 86_400.0
) -> float:
    """Median ratio of arrivals in past event windows to the same windows one season earlier.

    Occurrences whose window or reference window is not fully inside the history are skipped;
    with none usable the multiplier is 1 (no effect), never a guess.
    """
    values = history.cleaned().values
    ratios = []
    for start, end in occurrences:
        during = _window_sum(history, values, start, end)
        before = _window_sum(history, values, start - season_s, end - season_s)
        if during is not None and before is not None and before > 0:
            ratios.append(during / before)
    return float(np.median(ratios)) if ratios else 1.0


def _window_sum(history: Series, values: FloatArray, start: float, end: float) -> float | None:
    first = int(np.floor((start - history.start_s) / history.step_s))
    last = int(np.ceil((end - history.start_s) / history.step_s))
    if first < 0 or last > len(values) or last <= first:
        return None
    return float(values[first:last].sum())
