"""Per-key and per-slot load accounting: totals on the hot path, rates computed when asked.

The hot path only bumps dict counters; rates come from the difference between now and a snapshot
about one window old (snapshots are taken by `tick`, called periodically), which keeps publish
cheap and makes every rate an honest average over a known window.

Bounded by the keys that are active, not by every key ever seen: on each snapshot, a key with no
backlog whose counts did not change for a whole window is *folded* (its totals are added to its
slot's aggregate and its per-key entries, here and in the broker state, are deleted); and past
`max_keys` tracked keys, keys with no backlog are folded down to three quarters of it: first those
unchanged since the newest snapshot, then the oldest seen (their per-key rates then count only in
their slot; a hot key keeps changing, so it is the last to go). A key with backlog is never folded
(its retained messages still name it). Slot totals are the aggregates plus the tracked keys, so
folding changes no slot rate, and `GetLoadMetrics` costs O(tracked keys + slots).
"""

from __future__ import annotations

import heapq
import os
import resource
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from foreshard_broker.routing import KEYLESS_SLOT, slot_of

if TYPE_CHECKING:
    from foreshard_broker.server.state import BrokerState

MAX_TRACKED_KEYS = 10_000  # tracked keys; past it keys with no backlog fold, idle ones first


@dataclass
class Totals:
    """Per tracked key, since the process started: messages and bytes stored, and acknowledgements;
    per slot, the same for every key (tracked and folded)."""

    arrived: dict[str, int] = field(default_factory=dict)
    arrived_bytes: dict[str, int] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    slot_arrived: dict[int, int] = field(default_factory=dict)
    slot_arrived_bytes: dict[int, int] = field(default_factory=dict)
    slot_acked: dict[int, int] = field(default_factory=dict)


@dataclass
class KeyRates:
    key: str
    slot: int
    arrival_rate: float
    ack_rate: float
    arrived: int
    arrived_bytes: int


@dataclass
class SlotRates:
    slot: int
    arrival_rate: float
    ack_rate: float
    arrived: int
    arrived_bytes: int


class LoadTracker:
    def __init__(self, num_slots: int, window_s: float, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.num_slots = num_slots
        self.window_s = window_s
        self.max_keys = max_keys
        # The broker state's all-time per-key counters (see `attach`), and their values at start-up.
        self._stored: Counter[str] = Counter()
        self._stored_bytes: dict[str, int] = {}
        self._state: BrokerState | None = None
        self._baseline: Counter[str] = Counter()
        self._baseline_bytes: dict[str, int] = {}
        self._acked: dict[str, int] = {}
        # Folded keys' totals per slot: [arrived, arrived bytes, acked].
        self._folded: dict[int, list[int]] = {}
        self.folded_keys = 0
        self.group_acks: dict[str, int] = {}  # consumer group -> acknowledgements since start-up
        self._snapshots: deque[tuple[float, Totals]] = deque()
        self._slots: dict[str, int] = {}
        self.tick(time.monotonic())

    def attach(self, state: BrokerState) -> None:
        """Count arrivals from the state's stored counters, minus what they hold now: messages
        replayed from the log at start-up are not new arrivals (a counter starts at zero)."""
        self._state = state
        self._stored, self._stored_bytes = state.stored, state.stored_bytes
        self._baseline, self._baseline_bytes = Counter(state.stored), dict(state.stored_bytes)
        self._snapshots.clear()
        self.tick(time.monotonic())

    @property
    def tracked_keys(self) -> int:
        return len(self._stored)

    @property
    def totals(self) -> Totals:
        """Computed when asked (scrapes, ticks): publishing only bumps the state's counters."""
        baseline, baseline_bytes, stored_bytes = self._baseline, self._baseline_bytes, self._stored_bytes
        arrived = {key: count - baseline[key] for key, count in self._stored.items() if count > baseline[key]}
        arrived_bytes = {key: stored_bytes[key] - baseline_bytes.get(key, 0) for key in arrived}
        totals = Totals(arrived, arrived_bytes, dict(self._acked))
        for folded_slot, (count, size, acks) in self._folded.items():
            totals.slot_arrived[folded_slot], totals.slot_arrived_bytes[folded_slot] = count, size
            totals.slot_acked[folded_slot] = acks
        slot_arrived, slot_bytes, slot_acked = (
            totals.slot_arrived,
            totals.slot_arrived_bytes,
            totals.slot_acked,
        )
        slot = self.slot
        for key, count in arrived.items():
            at = slot(key)
            slot_arrived[at] = slot_arrived.get(at, 0) + count
            slot_bytes[at] = slot_bytes.get(at, 0) + arrived_bytes[key]
        for key, count in totals.acked.items():
            at = slot(key)
            slot_acked[at] = slot_acked.get(at, 0) + count
        return totals

    def imported(self, keys: list[str], sizes: list[int]) -> None:
        """A migration's copy was stored: not arrivals. It joins the baseline, as the log's replay
        at start-up does, so the published counters and the slot rates stay what producers sent
        (counted as arrivals, a move's copy showed the operator a burst of load it then sized
        shards for, and a scale-in's copies asked for the shards back)."""
        self._baseline.update(keys)
        baseline_bytes = self._baseline_bytes
        for key, size in zip(keys, sizes, strict=True):
            baseline_bytes[key] = baseline_bytes.get(key, 0) + size

    def acked(self, key: str) -> None:
        self._acked[key] = self._acked.get(key, 0) + 1

    def group_acked(self, group: str, count: int) -> None:
        self.group_acks[group] = self.group_acks.get(group, 0) + count

    def tick(self, now: float) -> None:
        """Keep snapshots covering at least one window (about six per window); fold cold keys."""
        if len(self._stored) > self.max_keys:
            self.fold_excess()
        if self._snapshots and now - self._snapshots[-1][0] < self.window_s / 6:
            return
        if self._snapshots and now - self._snapshots[0][0] >= self.window_s:
            self.fold(idle_since=self._snapshots[0][1])
        self._snapshots.append((now, self.totals))
        while len(self._snapshots) > 1 and now - self._snapshots[1][0] >= self.window_s:
            self._snapshots.popleft()

    def fold(self, idle_since: Totals) -> int:
        """Fold every key without backlog unchanged since `idle_since` (a snapshot); how many."""
        return self._fold(self._idle(idle_since))

    def fold_excess(self) -> int:
        """Past `max_keys`: fold keys without backlog down to 3/4 of it, idle ones first."""
        state, stored = self._state, self._stored
        excess = len(stored) - self.max_keys * 3 // 4
        if state is None or excess <= 0:
            return 0
        cold = self._idle(self._snapshots[-1][1])[:excess] if self._snapshots else []
        if len(cold) < excess:
            chosen, dropped = set(cold), state.dropped
            oldest = (k for k in stored if stored[k] == dropped[k] and k not in chosen)  # insertion order
            cold += [key for _, key in zip(range(excess - len(cold)), oldest, strict=False)]
        return self._fold(cold)

    def _idle(self, since: Totals) -> list[str]:
        """Keys without backlog whose arrivals and acks are what they were in `since`."""
        if self._state is None:
            return []
        dropped, arrived, acked = self._state.dropped, since.arrived, since.acked
        baseline, now_acked = self._baseline, self._acked
        return [
            key
            for key, count in self._stored.items()
            if count == dropped[key]
            and count - baseline[key] == arrived.get(key, 0)
            and now_acked.get(key, 0) == acked.get(key, 0)
        ]

    def _fold(self, cold: list[str]) -> int:
        state = self._state
        if state is None:
            return 0
        for key in cold:
            self._fold_key(key, state)
        self.folded_keys += len(cold)
        return len(cold)

    def _fold_key(self, key: str, state: BrokerState) -> None:
        aggregate = self._folded.setdefault(self.slot(key), [0, 0, 0])
        aggregate[0] += state.stored.pop(key) - self._baseline.pop(key, 0)
        aggregate[1] += state.stored_bytes.pop(key, 0) - self._baseline_bytes.pop(key, 0)
        aggregate[2] += self._acked.pop(key, 0)
        state.dropped.pop(key, None)
        state.dropped_bytes.pop(key, None)
        self._slots.pop(key, None)
        for _, snapshot in self._snapshots:
            snapshot.arrived.pop(key, None)
            snapshot.arrived_bytes.pop(key, None)
            snapshot.acked.pop(key, None)

    def slot(self, key: str) -> int:
        slot = self._slots.get(key)
        if slot is None:
            slot = slot_of(key, self.num_slots) if key else KEYLESS_SLOT
            self._slots[key] = slot
        return slot

    def folded_totals(self) -> dict[int, tuple[int, int, int]]:
        """Per slot, the totals of folded keys: (arrived, arrived bytes, acked)."""
        return {slot: (a, b, c) for slot, (a, b, c) in self._folded.items()}

    def slot_backlog(self) -> dict[int, tuple[int, int]]:
        """Retained messages and bytes per slot (folded keys have none: O(tracked keys))."""
        state = self._state
        out: dict[int, tuple[int, int]] = {}
        if state is None:
            return out
        dropped, dropped_bytes, stored_bytes = state.dropped, state.dropped_bytes, state.stored_bytes
        for key, count in state.stored.items():
            messages = count - dropped[key]
            if messages:
                slot = self.slot(key)
                held, size = out.get(slot, (0, 0))
                out[slot] = (held + messages, size + stored_bytes.get(key, 0) - dropped_bytes.get(key, 0))
        return out

    def rates(self, now: float, top: int = 0) -> tuple[float, list[KeyRates], list[SlotRates]]:
        """Rates over the elapsed window (its length in seconds): per tracked key (the `top`
        fastest-arriving, or all with 0) and per slot (every key, tracked or folded)."""
        then, old = self._snapshots[0]
        elapsed = max(now - then, 1e-3)
        totals = self.totals
        slots = [
            SlotRates(
                slot,
                (count - old.slot_arrived.get(slot, 0)) / elapsed,
                (totals.slot_acked.get(slot, 0) - old.slot_acked.get(slot, 0)) / elapsed,
                count,
                totals.slot_arrived_bytes.get(slot, 0),
            )
            for slot, count in (
                (s, totals.slot_arrived.get(s, 0)) for s in sorted({*totals.slot_arrived, *totals.slot_acked})
            )
        ]
        old_arrived, old_acked, acked = old.arrived, old.acked, totals.acked
        arrival = {key: (count - old_arrived.get(key, 0)) / elapsed for key, count in totals.arrived.items()}
        chosen = heapq.nlargest(top, arrival, key=arrival.__getitem__) if top else list(arrival)
        keys = [
            KeyRates(
                key,
                self.slot(key),
                arrival[key],
                (acked.get(key, 0) - old_acked.get(key, 0)) / elapsed,
                totals.arrived[key],
                totals.arrived_bytes[key],
            )
            for key in chosen
        ]
        return elapsed, keys, slots


class ProcessStats:
    """CPU and memory of this process from the OS (no third-party dependency)."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), _cpu_seconds())

    def sample(self) -> tuple[float, float, int]:
        """(CPU seconds so far, CPU percent since the previous sample, resident bytes)."""
        now, cpu = time.monotonic(), _cpu_seconds()
        then, cpu_then = self._last
        self._last = (now, cpu)
        percent = 100.0 * (cpu - cpu_then) / max(now - then, 1e-6)
        return cpu, percent, _rss_bytes()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the peak (kilobytes on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
