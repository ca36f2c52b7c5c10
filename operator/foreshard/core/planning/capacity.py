"""Resource estimation: what one shard sustains, from measured per-message cost.

Brokers export messages/s, bytes/s and CPU seconds/s. The cost of one message is the slope of
CPU against messages through the origin (least squares), so a shard's capacity follows from its
CPU limit and a target utilisation instead of a guess; bytes/s bound it from the disk side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadSample:
    messages_per_s: float
    bytes_per_s: float
    cpu_cores: float  # CPU seconds per second the broker used


@dataclass(frozen=True)
class ShardCapacity:
    messages_per_s: float
    bytes_per_s: float
    cpu_seconds_per_message: float
    basis: str  # a sentence saying what bound the capacity


def per_message_cost(samples: Sequence[LoadSample]) -> float:
    """CPU seconds per message: least-squares slope through the origin."""
    weight = sum(s.messages_per_s * s.messages_per_s for s in samples)
    if weight <= 0:
        raise ValueError("the samples carry no traffic; a per-message cost needs messages/s > 0")
    return sum(s.messages_per_s * s.cpu_cores for s in samples) / weight


def estimate_capacity(
    samples: Sequence[LoadSample], cpu_limit_cores: float, disk_bytes_per_s: float, utilization: float = 0.8
) -> ShardCapacity:
    """Messages/s and bytes/s one shard sustains at `utilization` of its CPU limit and disk."""
    cost = per_message_cost(samples)
    total_messages = sum(s.messages_per_s for s in samples)
    bytes_per_message = sum(s.bytes_per_s for s in samples) / total_messages
    by_cpu = utilization * cpu_limit_cores / cost if cost > 0 else float("inf")
    by_disk = utilization * disk_bytes_per_s / bytes_per_message if bytes_per_message > 0 else float("inf")
    if by_cpu <= by_disk:
        basis = f"CPU: {cost * 1e6:.1f} µs per message against {cpu_limit_cores:g} cores"
    else:
        basis = f"disk: {bytes_per_message:.0f} bytes per message against {disk_bytes_per_s:g} bytes/s"
    rate = min(by_cpu, by_disk)
    return ShardCapacity(rate, rate * bytes_per_message, cost, basis)


MIN_SAMPLES = 6  # load samples (broker x interval) below which no cost is learnt
MIN_SPREAD = 0.15  # coefficient of variation of the message rate needed to separate base from cost
BROKER_CORES = 1.0  # the broker is one asyncio process: it cannot use more than a core


class InsufficientLoad(ValueError):
    """Too few loaded samples to learn a cost; the message says what was seen."""


@dataclass(frozen=True)
class Cost:
    base_cores: float  # CPU the broker burns at zero traffic (scrapes, timers, GC)
    per_message: float  # CPU seconds per message on top
    samples: int


def learn_cost(samples: Sequence[LoadSample]) -> Cost:
    """CPU = base + cost x messages/s, by least squares over loaded samples.

    With too little spread in the message rate the intercept is noise: the line then goes through
    the origin, which charges the base to the messages and errs towards less capacity.
    """
    loaded = [s for s in samples if s.messages_per_s > 0 and s.cpu_cores >= 0]
    if len(loaded) < MIN_SAMPLES:
        raise InsufficientLoad(
            f"{len(loaded)} loaded broker samples, need {MIN_SAMPLES} to learn a per-message cost"
        )
    rates = [s.messages_per_s for s in loaded]
    cpu = [s.cpu_cores for s in loaded]
    mean_rate, mean_cpu = sum(rates) / len(rates), sum(cpu) / len(cpu)
    variance = sum((r - mean_rate) ** 2 for r in rates) / len(rates)
    if variance**0.5 >= MIN_SPREAD * mean_rate:
        slope = sum((r - mean_rate) * (c - mean_cpu) for r, c in zip(rates, cpu, strict=True)) / (
            variance * len(rates)
        )
        base = mean_cpu - slope * mean_rate
        if slope > 0 and base >= 0:
            return Cost(base, slope, len(loaded))
    return Cost(0.0, per_message_cost(loaded), len(loaded))


def learn_capacity(
    samples: Sequence[LoadSample],
    cpu_limit_cores: float | None,
    disk_bytes_per_s: float | None,
    utilization: float = 0.8,
) -> ShardCapacity:
    """Messages/s one shard sustains at `utilization` of its usable CPU (and disk), from measurements."""
    cost = learn_cost(samples)
    cores = min(cpu_limit_cores or BROKER_CORES, BROKER_CORES)
    loaded = [s for s in samples if s.messages_per_s > 0]
    bytes_per_message = sum(s.bytes_per_s for s in loaded) / sum(s.messages_per_s for s in loaded)
    spare = max(utilization * cores - cost.base_cores, 0.0)
    by_cpu = spare / cost.per_message if cost.per_message > 0 else float("inf")
    disk = disk_bytes_per_s or float("inf")
    by_disk = utilization * disk / bytes_per_message if bytes_per_message > 0 else float("inf")
    rate = min(by_cpu, by_disk)
    if by_cpu <= by_disk:
        basis = (
            f"CPU: {cost.per_message * 1e6:.1f} µs per message over a base of {cost.base_cores:.3f} cores, "
            f"{utilization:.0%} of {cores:g} core(s), from {cost.samples} samples"
        )
    else:
        basis = f"disk: {bytes_per_message:.0f} bytes per message against {disk:g} bytes/s"
    return ShardCapacity(rate, rate * bytes_per_message, cost.per_message, basis)
