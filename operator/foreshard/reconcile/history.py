"""A queue's forecast inputs from Prometheus, read incrementally between forecast cycles.

The first cycle reads the lookback of every series it needs; later cycles read only the intervals
since (plus the last two again: an interval read just after it closed may still be missing a
scrape) and drop what fell out of the lookback. The memory this keeps is a cache: a restarted
operator reads everything once and reaches the same series.

    volumes (instant, every RANK_EVERY_S) --tracking.wanted--> tracked keys
    tracked keys + people's OPF keys + slots of slot-range OPFs + the queue total --read--> Series
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from foreshard.core.planning.capacity import LoadSample
from foreshard.core.series import Series

RANK_EVERY_S = 600.0  # the heaviest keys change slowly; ranking 10k keys is the costliest query
RANK_WINDOW_S = 86_400.0  # rank on the last day (or the lookback, when shorter)
OVERLAP_STEPS = 2
TOTAL = "__total__"


class HistoryReader(Protocol):
    def arrivals(
        self,
        queue: str,
        start_s: float,
        end_s: float,
        step_s: float,
        by: str = "key",
        only: Sequence[str] | None = None,
    ) -> dict[str, Series]: ...

    def total(self, queue: str, start_s: float, end_s: float, step_s: float) -> Series: ...

    def volumes(self, queue: str, end_s: float, window_s: float) -> dict[str, float]: ...

    def acks(
        self, queue: str, start_s: float, end_s: float, step_s: float, groups: Sequence[str] | None = None
    ) -> dict[str, Series]: ...

    def backlogs(self, queue: str, groups: Sequence[str], at_s: float) -> dict[str, float]: ...

    def load(
        self, queue: str, start_s: float, end_s: float, step_s: float, window_s: float
    ) -> list[LoadSample]: ...


@dataclass
class HistoryCache:
    """Series by id (key, `slot:N`, `group:G`, TOTAL), all on one grid ending at `end_s`."""

    series: dict[str, Series] = field(default_factory=dict)
    volumes: dict[str, float] = field(default_factory=dict)
    ranked_at_s: float = -math.inf
    step_s: float = 0.0


def grid(now_s: float, step_s: float, lookback_s: float) -> tuple[float, float]:
    """[start, end) of the lookback on whole steps before now (same step, same data)."""
    end_s = now_s // step_s * step_s
    return end_s - lookback_s, end_s


def spliced(old: Series | None, new: Series, start_s: float, end_s: float, step_s: float) -> Series:
    """`old` with `new` laid over it, on the grid [start_s, end_s); missing stays NaN."""
    count = round((end_s - start_s) / step_s)
    values = np.full(count, np.nan)
    for part in [p for p in (old, new) if p is not None]:
        offset = round((part.start_s - start_s) / step_s)
        lo, hi = max(0, offset), min(count, offset + len(part))
        if hi > lo:
            chunk = part.values[lo - offset : hi - offset]
            values[lo:hi] = np.where(np.isfinite(chunk), chunk, values[lo:hi])
    return Series(new.key, start_s, step_s, values)


def since(cache: HistoryCache, ids: Iterable[str], start_s: float) -> float:
    """Where the next read of these series starts: the lookback for a new one, else the overlap."""
    ends = [cache.series[i].end_s for i in ids if i in cache.series]
    if len(ends) != len(list(ids)) or not ends:
        return start_s
    return max(start_s, min(ends) - OVERLAP_STEPS * cache.step_s)


def refresh_keys(
    cache: HistoryCache,
    reader: HistoryReader,
    queue: str,
    ids: Mapping[str, tuple[str, str]],
    window: tuple[float, float],
) -> None:
    """Bring series up to `end_s`; `ids` maps a series id to (label, value), label key or slot."""
    start_s, end_s = window
    for label in sorted({lab for lab, _ in ids.values()}):
        chosen = {i: v for i, (lab, v) in ids.items() if lab == label}
        # new series read the whole lookback, known ones only their tail: two reads at most
        for fresh in (True, False):
            group = {i: v for i, v in chosen.items() if (i in cache.series) != fresh}
            if not group:
                continue
            first = start_s if fresh else since(cache, group, start_s)
            found = reader.arrivals(queue, first, end_s, cache.step_s, by=label, only=sorted(group.values()))
            for sid, value in group.items():
                new = found.get(value) or Series(sid, first, cache.step_s, np.full(0, np.nan))
                new = Series(sid, new.start_s, new.step_s, new.values)
                cache.series[sid] = spliced(cache.series.get(sid), new, start_s, end_s, cache.step_s)


def refresh_total(
    cache: HistoryCache, reader: HistoryReader, queue: str, window: tuple[float, float]
) -> Series:
    start_s, end_s = window
    first = since(cache, [TOTAL], start_s)
    new = reader.total(queue, first, end_s, cache.step_s)
    cache.series[TOTAL] = spliced(
        cache.series.get(TOTAL),
        Series(TOTAL, new.start_s, new.step_s, new.values),
        start_s,
        end_s,
        cache.step_s,
    )
    return cache.series[TOTAL]


def refresh_acks(
    cache: HistoryCache, reader: HistoryReader, queue: str, groups: Sequence[str], window: tuple[float, float]
) -> dict[str, Series]:
    start_s, end_s = window
    ids = [f"group:{g}" for g in groups]
    out: dict[str, Series] = {}
    if not groups:
        return out
    first = since(cache, ids, start_s)
    found = reader.acks(queue, first, end_s, cache.step_s, list(groups))
    for group, sid in zip(groups, ids, strict=True):
        new = found.get(group) or Series(sid, first, cache.step_s, np.full(0, np.nan))
        cache.series[sid] = spliced(
            cache.series.get(sid),
            Series(sid, new.start_s, new.step_s, new.values),
            start_s,
            end_s,
            cache.step_s,
        )
        out[group] = cache.series[sid]
    return out


def ranked(
    cache: HistoryCache, reader: HistoryReader, queue: str, end_s: float, lookback_s: float
) -> dict[str, float]:
    """Per-key volumes, re-read every RANK_EVERY_S (the heaviest keys drift slowly)."""
    if end_s - cache.ranked_at_s >= RANK_EVERY_S:
        cache.volumes = reader.volumes(queue, end_s, min(lookback_s, RANK_WINDOW_S))
        cache.ranked_at_s = end_s
    return cache.volumes


def forget(cache: HistoryCache, keep: Iterable[str]) -> None:
    """Drop series nothing asks for any more (keys that left the tracked set)."""
    wanted = set(keep)
    for sid in [s for s in cache.series if s not in wanted]:
        del cache.series[sid]
