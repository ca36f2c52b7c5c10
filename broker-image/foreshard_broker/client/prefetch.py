"""Prefetch Agent: how many messages (and bytes) a consumer should hold ahead of its application.

Pure sizing logic; the consumer feeds it observations with explicit timestamps and asks it how much
to fetch.  Nothing here reads a clock or does I/O, so tests and the benchmark drive it directly.

The buffer must cover the messages the application will consume while the next fetch is in flight:

    target = ceil(demand_rate * fetch_round_trip * margin) + 2 * concurrency

* ``demand_rate`` is the predicted consumption rate.  When the broker still has a backlog (the last
  fetch came back full) the application will consume as fast as it can, i.e. at its measured
  capacity ``concurrency / processing_time``; when the broker ran dry (a fetch came back empty) the
  demand is the measured acknowledgement rate.  The operator's forecast, when given, raises the
  estimate (capped by the capacity: fetching more than the application can eat in a round trip
  only costs memory).
* ``margin`` is the policy's safety margin widened by the variability of processing times (see
  :meth:`PrefetchAgent.margin`).
* ``2 * concurrency`` covers the messages being processed plus one ready for every worker, so a
  worker never waits for a round trip.
* The target is bounded by ``max_messages`` and by ``max_bytes`` (through the mean message size), and
  shrinks with the demand estimate, which decays when acknowledgements slow down.  The estimates
  average their first samples plainly, so one lucky early measurement cannot flood the buffer.

Using the acknowledgement rate alone would lock a starved consumer into a fraction of its capacity
(a small buffer caps the ack rate, which keeps the buffer small); the capacity term breaks that loop.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

# Spreads of the per-round-trip consumption added to the safety margin (see PrefetchAgent.margin).
_SPREADS = 3.0


@dataclass(frozen=True)
class PrefetchPolicy:
    """Bounds and tuning of the agent; ``max_messages`` and ``max_bytes`` are hard limits."""

    max_messages: int = 1000
    max_bytes: int = 8 * 1024 * 1024
    min_messages: int = 1
    safety_margin: float = 1.5
    # Smoothing horizon of the rate, round-trip and processing-time estimates, in seconds.
    horizon_s: float = 1.0
    # Assumed before anything is measured: small, so a cold consumer does not flood itself.
    initial_round_trip_s: float = 0.005
    initial_message_bytes: int = 256

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be at least 1")
        if not 1 <= self.min_messages <= self.max_messages:
            raise ValueError("min_messages must be between 1 and max_messages")
        if self.safety_margin < 1.0:
            raise ValueError("safety_margin below 1.0 would starve the consumer by design")


@dataclass(frozen=True)
class FetchSize:
    """What one fetch may ask for; zero messages means: do not fetch now."""

    max_messages: int
    max_bytes: int


@dataclass
class Ewma:
    """Exponentially weighted mean over irregular samples, weighted by elapsed time."""

    horizon_s: float
    value: float | None = None
    last_at: float | None = None
    count: int = 0

    def add(self, now: float, sample: float) -> None:
        self.count += 1
        if self.value is None or self.last_at is None:
            self.value, self.last_at = sample, now
            return
        # The first samples are averaged plainly: one lucky 0.1 ms processing time must not
        # pass for the application's capacity and flood the buffer.
        weight = max(1.0 - math.exp(-max(now - self.last_at, 1e-6) / self.horizon_s), 1.0 / self.count)
        self.value += weight * (sample - self.value)
        self.last_at = now


@dataclass
class WindowedMin:
    """Minimum of the last ``size`` samples.

    Fetch round trips are only ever inflated by noise (a long-poll that waited for the first
    message, a busy broker), never shortened, so the recent minimum is the honest estimate.
    """

    size: int = 32
    samples: deque[float] = field(default_factory=deque)

    def add(self, sample: float) -> None:
        self.samples.append(sample)
        if len(self.samples) > self.size:
            self.samples.popleft()

    @property
    def value(self) -> float | None:
        return min(self.samples) if self.samples else None


@dataclass
class RateMeter:
    """Events per second, estimated over buckets of ``bucket_s`` and smoothed over ``horizon_s``.

    A bucket closes when a later event or a read arrives, so an idle period decays the rate instead
    of freezing it at its last busy value.
    """

    horizon_s: float
    bucket_s: float = 0.05
    _bucket_start: float | None = None
    _bucket_count: int = 0
    _ewma: Ewma = field(init=False)

    def __post_init__(self) -> None:
        self._ewma = Ewma(self.horizon_s)

    def add(self, now: float, count: int = 1) -> None:
        self._roll(now)
        self._bucket_count += count

    def rate(self, now: float) -> float:
        self._roll(now)
        return self._ewma.value or 0.0

    def _roll(self, now: float) -> None:
        if self._bucket_start is None:
            self._bucket_start = now
            return
        elapsed = now - self._bucket_start
        if elapsed < self.bucket_s:
            return
        self._ewma.add(now, self._bucket_count / elapsed)
        self._bucket_start, self._bucket_count = now, 0


class PrefetchAgent:
    """Sizes the consumer's buffer from observed demand, round trip and message size."""

    def __init__(self, policy: PrefetchPolicy, concurrency: int = 1) -> None:
        self.policy = policy
        self.concurrency = max(1, concurrency)
        self.acks = RateMeter(policy.horizon_s)
        self._round_trip = WindowedMin()
        self._processing = Ewma(policy.horizon_s)
        self._processing_sq = Ewma(policy.horizon_s)
        self._size = Ewma(policy.horizon_s)
        self._forecast_rate: float | None = None
        self._backlog_seen = True

    # --- observations -------------------------------------------------------------------------
    def record_acks(self, now: float, count: int) -> None:
        self.acks.add(now, count)

    def record_processing(self, now: float, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self._processing.add(now, seconds)
        self._processing_sq.add(now, seconds * seconds)

    def record_fetch(self, now: float, round_trip_s: float, asked: int, got: int, got_bytes: int) -> None:
        """One fetch answered.  Only an empty answer (a long-poll that found nothing) says the broker
        ran dry: a short answer is common with a backlog (keys held by unacked messages, byte
        bounds, several fetch loops sharing the room), and reading it as "no backlog" would lock
        the buffer into a fraction of the application's capacity."""
        self._backlog_seen = got > 0
        if got:
            # An empty answer is mostly the broker's long-poll wait, not a round trip.
            self._round_trip.add(max(round_trip_s, 0.0))
        if got:
            self._size.add(now, got_bytes / got)

    def set_forecast(self, rate_per_s: float | None) -> None:
        """The operator's forecast of this consumer's share of the group's consumption rate."""
        self._forecast_rate = rate_per_s if rate_per_s and rate_per_s > 0 else None

    # --- decisions ----------------------------------------------------------------------------
    def capacity_rate(self) -> float | None:
        """Messages per second the application can process, or None before any measurement."""
        processing = self._processing.value
        if processing is None:
            return None
        return self.concurrency / max(processing, 1e-6)

    def demand_rate(self, now: float) -> float:
        measured = self.acks.rate(now)
        capacity = self.capacity_rate()
        if self._backlog_seen and capacity is not None:
            measured = max(measured, capacity)
        if self._forecast_rate is not None:
            forecast = self._forecast_rate if capacity is None else min(self._forecast_rate, capacity)
            measured = max(measured, forecast)
        return measured

    def round_trip_s(self) -> float:
        value = self._round_trip.value
        return self.policy.initial_round_trip_s if value is None else value

    def message_bytes(self) -> float:
        value = self._size.value
        return float(self.policy.initial_message_bytes) if value is None else max(value, 1.0)

    def margin(self) -> float:
        """Safety margin, widened by how much consumption over one round trip can vary.

        Over a round trip each worker processes ``n = round_trip / mean_processing`` messages; the
        relative spread of that count is about ``cv / sqrt(n)`` (cv: coefficient of variation of the
        processing time).  Three spreads on top of the base margin keep bursty handlers fed without
        paying for it when handlers are steady or round trips long (two measured 2 % worse p99
        delivery at a 50 ms round trip in ``bench/prefetch.py``; four only cost memory).
        """
        mean, mean_sq = self._processing.value, self._processing_sq.value
        if mean is None or mean_sq is None or mean <= 0:
            return self.policy.safety_margin
        cv = math.sqrt(max(mean_sq - mean * mean, 0.0)) / mean
        per_round_trip = max(1.0, self.round_trip_s() / mean)
        return self.policy.safety_margin + _SPREADS * cv / math.sqrt(per_round_trip)

    def target_messages(self, now: float) -> int:
        """Messages to hold (buffered plus being processed plus asked for)."""
        policy = self.policy
        wanted = math.ceil(self.demand_rate(now) * self.round_trip_s() * self.margin())
        # Every worker busy plus one message ready for each: processing times vary, and a worker
        # that finishes early must not wait a round trip.
        wanted += 2 * self.concurrency
        by_bytes = int(policy.max_bytes // self.message_bytes())
        return max(policy.min_messages, min(wanted, policy.max_messages, max(by_bytes, 1)))

    def next_fetch(self, now: float, held_messages: int, held_bytes: int) -> FetchSize:
        """The next fetch's size, given what is already held or reserved for fetches in flight."""
        room_bytes = self.policy.max_bytes - held_bytes
        room_messages = self.target_messages(now) - held_messages
        if room_messages <= 0 or room_bytes <= 0:
            return FetchSize(0, 0)
        return FetchSize(room_messages, room_bytes)


class FixedPrefetch(PrefetchAgent):
    """A static prefetch count (RabbitMQ-style), for comparison with the adaptive agent."""

    def __init__(self, policy: PrefetchPolicy, count: int, concurrency: int = 1) -> None:
        super().__init__(policy, concurrency)
        self.count = count

    def target_messages(self, now: float) -> int:
        by_bytes = int(self.policy.max_bytes // self.message_bytes())
        return max(1, min(self.count, by_bytes))
