"""Per-key and per-slot load accounting: totals on the hot path, rates computed when asked.

The hot path only bumps dict counters; rates come from the difference between now and a snapshot
about one window old (snapshots are taken by `tick`, called periodically), which keeps publish
cheap and makes every rate an honest average over a known window.
"""

from __future__ import annotations

import os
import resource
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from foreshard_broker.routing import KEYLESS_SLOT, slot_of


@dataclass
class Totals:
    """Per key, since the process started: messages and bytes stored, and acknowledgements."""

    arrived: dict[str, int] = field(default_factory=dict)
    arrived_bytes: dict[str, int] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)


@dataclass
class KeyRates:
    key: str
    slot: int
    arrival_rate: float
    ack_rate: float
    arrived: int
    arrived_bytes: int


class LoadTracker:
    def __init__(self, num_slots: int, window_s: float) -> None:
        self.num_slots = num_slots
        self.window_s = window_s
        # The broker state's all-time stored counters (see `attach`), and their values at start-up.
        self._stored: Counter[str] = Counter()
        self._stored_bytes: dict[str, int] = {}
        self._baseline: Counter[str] = Counter()
        self._baseline_bytes: dict[str, int] = {}
        self._acked: dict[str, int] = {}
        self.group_acks: dict[str, int] = {}  # consumer group -> acknowledgements since start-up
        self._snapshots: deque[tuple[float, Totals]] = deque()
        self._slots: dict[str, int] = {}
        self.tick(time.monotonic())

    def attach(self, stored: Counter[str], stored_bytes: dict[str, int]) -> None:
        """Count arrivals from the state's stored counters, minus what they hold now: messages
        replayed from the log at start-up are not new arrivals (a counter starts at zero)."""
        self._stored, self._stored_bytes = stored, stored_bytes
        self._baseline, self._baseline_bytes = Counter(stored), dict(stored_bytes)
        self._snapshots.clear()
        self.tick(time.monotonic())

    @property
    def totals(self) -> Totals:
        """Computed when asked (scrapes, ticks): publishing only bumps the state's counters."""
        baseline, baseline_bytes, stored_bytes = self._baseline, self._baseline_bytes, self._stored_bytes
        arrived = {key: count - baseline[key] for key, count in self._stored.items() if count > baseline[key]}
        arrived_bytes = {key: stored_bytes[key] - baseline_bytes.get(key, 0) for key in arrived}
        return Totals(arrived, arrived_bytes, dict(self._acked))

    def acked(self, key: str) -> None:
        self._acked[key] = self._acked.get(key, 0) + 1

    def group_acked(self, group: str, count: int) -> None:
        self.group_acks[group] = self.group_acks.get(group, 0) + count

    def tick(self, now: float) -> None:
        """Keep snapshots covering at least one window (about six per window)."""
        if self._snapshots and now - self._snapshots[-1][0] < self.window_s / 6:
            return
        self._snapshots.append((now, self.totals))
        while len(self._snapshots) > 1 and now - self._snapshots[1][0] >= self.window_s:
            self._snapshots.popleft()

    def slot(self, key: str) -> int:
        slot = self._slots.get(key)
        if slot is None:
            slot = slot_of(key, self.num_slots) if key else KEYLESS_SLOT
            self._slots[key] = slot
        return slot

    def rates(self, now: float) -> tuple[float, list[KeyRates]]:
        """Per key rates over the elapsed window, and that window's length in seconds."""
        then, old = self._snapshots[0]
        elapsed = max(now - then, 1e-3)
        totals = self.totals
        out = []
        for key, arrived in totals.arrived.items():
            acked = totals.acked.get(key, 0)
            out.append(
                KeyRates(
                    key,
                    self.slot(key),
                    (arrived - old.arrived.get(key, 0)) / elapsed,
                    (acked - old.acked.get(key, 0)) / elapsed,
                    arrived,
                    totals.arrived_bytes[key],
                )
            )
        return elapsed, out


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
