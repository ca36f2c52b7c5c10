"""Target shard count: enough for the planned rate at the planning utilisation."""

from __future__ import annotations

import math


def shards_for_rate(rate: float, capacity: float, utilization: float, minimum: int = 1) -> int:
    """Shards so that `rate` (messages/s) loads each to at most `utilization` of `capacity`.

    A utilization above 1 deliberately plans below the rate (the simulator's most frugal knobs).
    """
    if capacity <= 0 or utilization <= 0:
        raise ValueError(f"capacity and utilization must be positive; got {capacity}, {utilization}")
    # the rounding guard keeps float noise (2.0000000001 shards) from costing a whole shard
    return max(minimum, math.ceil(round(max(rate, 0.0) / (capacity * utilization), 9)))
