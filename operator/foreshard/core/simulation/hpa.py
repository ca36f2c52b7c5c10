"""The Kubernetes HorizontalPodAutoscaler's replica arithmetic, as the baselines run it.

    desired = ceil(current * metric / target)     unless |metric / target - 1| <= tolerance
    scale-up: no stabilization; at most max(100 % of current, 4 pods) more per 15 s period
    scale-down: the highest recommendation of the last 300 s (stabilization window)

This mirrors `normalizeDesiredReplicasWithBehaviors` of kube-controller-manager with the
default `behavior`: one sync every 15 s, so the 15 s rate-limit period equals one sync.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

TOLERANCE = 0.1
SYNC_S = 15.0
SCALE_DOWN_STABILIZATION_S = 300.0
SCALE_UP_PODS = 4
SCALE_UP_PERCENT = 100.0


@dataclass(frozen=True)
class Behavior:
    tolerance: float = TOLERANCE
    scale_down_stabilization_s: float = SCALE_DOWN_STABILIZATION_S
    scale_up_pods: int = SCALE_UP_PODS
    scale_up_percent: float = SCALE_UP_PERCENT
    min_replicas: int = 1
    max_replicas: int = 100_000


def raw_desired(current: int, ratio: float, tolerance: float = TOLERANCE) -> int:
    """The formula: keep `current` inside the tolerance band, else ceil(current * ratio)."""
    if abs(ratio - 1.0) <= tolerance:
        return current
    # the rounding guard keeps 2.0000000001 from becoming 3 replicas
    return math.ceil(round(current * ratio, 9))


def scale_up_limit(current: int, behavior: Behavior) -> int:
    by_percent = math.floor(current * (1.0 + behavior.scale_up_percent / 100.0))
    return max(by_percent, current + behavior.scale_up_pods)


class Stabilizer:
    """Recommendations of the last window; answers their maximum in amortised O(1).

    A monotone deque replaces the HPA's list scan because the simulator asks once per step
    over millions of steps.
    """

    def __init__(self, window_steps: int) -> None:
        self.window = max(window_steps, 1)
        self._maxima: deque[tuple[int, int]] = deque()  # (step, recommendation), decreasing

    def push(self, step: int, recommendation: int) -> int:
        maxima = self._maxima
        while maxima and maxima[-1][1] <= recommendation:
            maxima.pop()
        maxima.append((step, recommendation))
        while maxima[0][0] <= step - self.window:
            maxima.popleft()
        return maxima[0][1]


class Hpa:
    """One HPA object: feed it the desired count every sync, it answers the replicas to set."""

    def __init__(self, behavior: Behavior, step_s: float = SYNC_S) -> None:
        self.behavior = behavior
        self._stabilizer = Stabilizer(round(behavior.scale_down_stabilization_s / step_s))

    def next_replicas(self, step: int, current: int, desired: int) -> int:
        behavior = self.behavior
        desired = min(max(desired, behavior.min_replicas), behavior.max_replicas)
        highest_recent = self._stabilizer.push(step, desired)
        if desired > current:
            return min(desired, scale_up_limit(current, behavior))
        return min(current, highest_recent)

    def quiet(self, step: int, current: int, desired: int, last: int) -> int:
        """Through `last` when the formula keeps `current`: the window then only gains `current`."""
        desired = min(max(desired, self.behavior.min_replicas), self.behavior.max_replicas)
        if desired != current:
            return step
        self._stabilizer.push(last, current)  # later equal entries dominate earlier ones
        return last
