"""Target shard count: the planning quantile over [now + lead, now + horizon], with headroom.

Scale-out happens once the forecast over [now + lead, now + reach] (reach: the short horizon, or
the long one when unset) or the observed rate needs more shards, and then sizes for the peak over
[now + lead, now + horizon] at once: one step per ramp, because every scale event moves slots.
Scale-in is allowed only after the stabilization window has seen nothing higher, when the
forecast over [now, now + horizon] agrees (removal is immediate and return is not), and when it
frees at least SCALE_IN_BAND of the shards (no one-shard steps back and forth as forecasts move).
An untrusted forecast falls back to reactive sizing on the observed rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from foreshard.core.forecasting.types import Forecast

SCALE_IN_BAND = 0.2  # a scale-in must free at least this share of the running shards


def shards_for_rate(rate: float, capacity: float, utilization: float, minimum: int = 1) -> int:
    """Shards so that `rate` (messages/s) loads each to at most `utilization` of `capacity`.

    A utilization above 1 deliberately plans below the rate (the simulator's most frugal knobs).
    """
    if capacity <= 0 or utilization <= 0:
        raise ValueError(f"capacity and utilization must be positive; got {capacity}, {utilization}")
    # the rounding guard keeps float noise (2.0000000001 shards) from costing a whole shard
    return max(minimum, math.ceil(round(max(rate, 0.0) / (capacity * utilization), 9)))


@dataclass(frozen=True)
class TargetPolicy:
    capacity: float  # messages/s per shard
    lead_s: float = 120.0
    horizon_s: float = 3600.0
    # spec.forecast.shortHorizon: scale-out sizes on [lead, short horizon] (pods started now serve
    # what comes soon; a peak hours away is the long horizon's business, which still guards
    # scale-in); None: scale-out sizes on [lead, horizon]
    short_horizon_s: float | None = None
    quantile: float = 0.9
    headroom: float = 0.2  # plan for rate * (1 + headroom)
    min_shards: int = 1
    max_shards: int = 256
    scale_in_band: float = SCALE_IN_BAND

    @property
    def utilization(self) -> float:
        return 1.0 / (1.0 + self.headroom)


@dataclass(frozen=True)
class TargetDecision:
    target: int
    reason: str  # stable CamelCase: ScaleOut, ScaleIn, Hold, ReactiveFallback
    forecast_peak: float  # messages/s the target is sized for
    message: str


def window_peak(forecast: Forecast, now_s: float, begin_s: float, end_s: float, quantile: float) -> float:
    """Peak rate (messages/s) of the quantile path over the intervals touching [begin, end]."""
    path = forecast.quantile(quantile) if quantile in forecast.quantiles else forecast.mean
    starts = forecast.start_s + forecast.step_s * np.arange(len(path))
    inside = (starts + forecast.step_s > now_s + begin_s) & (starts <= now_s + end_s)
    return float(path[inside].max() / forecast.step_s) if inside.any() else 0.0


def _clamp(shards: int, policy: TargetPolicy) -> int:
    return min(max(shards, policy.min_shards), policy.max_shards)


def plan_target(
    forecast: Forecast | None,
    now_s: float,
    current: int,
    observed_rate: float,
    recent_targets: Sequence[int],
    policy: TargetPolicy,
) -> TargetDecision:
    """The shard count to run now; `recent_targets`: this function's answers in the stabilization window."""
    reactive = _clamp(shards_for_rate(observed_rate, policy.capacity, policy.utilization), policy)
    if forecast is None or not forecast.trusted:
        why = "no forecast" if forecast is None else f"forecast {forecast.model or 'model'} is not trusted"
        return TargetDecision(
            reactive,
            "ReactiveFallback",
            observed_rate,
            f"{why}: sized {reactive} shards on {observed_rate:.1f} msg/s",
        )
    reach = policy.horizon_s if policy.short_horizon_s is None else max(policy.short_horizon_s, policy.lead_s)
    soon = window_peak(forecast, now_s, policy.lead_s, reach, policy.quantile)
    if max(shards_for_rate(soon, policy.capacity, policy.utilization), reactive) > current:
        ahead = max(window_peak(forecast, now_s, policy.lead_s, policy.horizon_s, policy.quantile), soon)
        up = _clamp(max(shards_for_rate(ahead, policy.capacity, policy.utilization), reactive), policy)
        if up > current:
            return TargetDecision(up, "ScaleOut", ahead, _sentence("scale out", current, up, ahead, policy))
    hold = max(window_peak(forecast, now_s, 0.0, policy.horizon_s, policy.quantile), observed_rate)
    down = _clamp(max([shards_for_rate(hold, policy.capacity, policy.utilization), *recent_targets]), policy)
    if down < current and current - down >= policy.scale_in_band * current:
        return TargetDecision(down, "ScaleIn", hold, _sentence("scale in", current, down, hold, policy))
    return TargetDecision(current, "Hold", hold, _sentence("hold", current, current, hold, policy))


def _sentence(verb: str, current: int, target: int, peak: float, policy: TargetPolicy) -> str:
    return (
        f"{verb} {current} -> {target} shards: q{policy.quantile:g} peak {peak:.1f} msg/s over the next "
        f"{policy.horizon_s:g}s at {policy.capacity:g} msg/s per shard with {policy.headroom:.0%} headroom"
    )
