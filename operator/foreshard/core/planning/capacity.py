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
