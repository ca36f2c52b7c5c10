"""Which series a queue forecasts on their own, and which OrderParamForecasts that asks for. Pure.

    key volumes + event keys --wanted--> tracked keys (heaviest MAX_TRACKED, then event keys)
    tracked keys + existing operator OPFs --diff--> (create, delete)
    total - sum(tracked) --tail--> one series for every other key

The planner sums the tracked keys and the tail, so every message is forecast exactly once; a
person's OPF for a quiet key is forecast too, but from its own series (it is already in the tail).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from foreshard.api.orderparamforecast import TAIL, ForecastObject, Target, object_name
from foreshard.core.series import Series

MAX_TRACKED = 50  # heaviest keys forecast on their own (and given an OPF); the rest is the tail


@dataclass(frozen=True)
class Diff:
    create: tuple[Target, ...]
    delete: tuple[str, ...]  # names of operator-made OPFs no longer tracked


def event_keys(events: Iterable[Mapping[str, object]]) -> list[str]:
    """Keys named in spec.events (an event without keys covers the whole queue: no key of its own)."""
    keys = {str(key) for event in events for key in (event.get("keys") or [])}  # type: ignore[attr-defined]
    return sorted(keys)


def heaviest(volumes: Mapping[str, float], limit: int = MAX_TRACKED) -> list[str]:
    """The `limit` keys with the most messages (ties by name, so the choice is deterministic).

    The empty key is the broker's bucket for keys past its cardinality cap: it is tail, not a key.
    """
    ranked = sorted(
        (key for key, volume in volumes.items() if key and volume > 0), key=lambda k: (-volumes[k], k)
    )
    return ranked[:limit]


def wanted(volumes: Mapping[str, float], events: Sequence[str], limit: int = MAX_TRACKED) -> list[str]:
    """Tracked keys: the heaviest, then every event key (an event key may be quiet until its event)."""
    chosen = heaviest(volumes, limit)
    return chosen + sorted(set(events) - set(chosen))


def diff(queue: str, tracked: Sequence[str], existing: Iterable[ForecastObject]) -> Diff:
    """OPFs to create (tracked keys and the tail without one) and operator OPFs to delete.

    Only objects the operator made are ever deleted; a person's OPF for the same key stands beside
    the operator's (they have different names) and is left alone.
    """
    targets = [Target.of_key(key) for key in tracked] + [Target.tail()]
    managed = {o.name: o for o in existing if o.managed and o.queue == queue}
    names = {object_name(queue, target): target for target in targets}
    create = tuple(target for name, target in names.items() if name not in managed)
    delete = tuple(sorted(name for name in managed if name not in names))
    return Diff(create, delete)


def tail(total: Series, tracked: Iterable[Series]) -> Series:
    """The queue's total minus the tracked keys, never below zero; missing where the total is."""
    values = total.values.copy()
    for one in tracked:
        values = values - np.nan_to_num(one.values, nan=0.0)
    return Series(
        TAIL, total.start_s, total.step_s, np.where(np.isfinite(values), np.maximum(values, 0.0), np.nan)
    )


def slot_range(per_slot: Mapping[str, Series], target: Target, like: Series) -> Series:
    """Sum of the slots in the target's range; missing where no slot in it has data."""
    chosen = [
        s.values for name, s in per_slot.items() if name.isdigit() and target.start <= int(name) <= target.end
    ]
    if not chosen:
        return Series(target.series_id, like.start_s, like.step_s, np.full(len(like), np.nan))
    stack = np.vstack(chosen)
    values = np.where(np.isnan(stack).all(axis=0), np.nan, np.nansum(stack, axis=0))
    return Series(target.series_id, like.start_s, like.step_s, values)
