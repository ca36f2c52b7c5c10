"""Discrete-time replay of a workload against one policy.

Each step (default 15 s, one HPA sync) the queue receives that step's arrivals, the ready shards
consume up to `capacity * step` messages (less the service lost to slot pauses), and the policy
sees the step's metrics and answers the replicas to run. New pods become ready `lead_s` after
they are requested; scale-in is immediate after the highest ordinals are drained. Shards are a
pooled capacity: slots are spread evenly, so the queue behaves as one FIFO whose oldest message
sets the SLO age (a key hotter than one shard is the planner's report, not the simulator's).

Slots move with the fewest moves a sticky, balanced placement needs; each moved slot pauses
for `pause_per_move_s`, during which its share of the consumers does no work.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from foreshard.core.series import FloatArray
from foreshard.core.simulation.policies import Observation, Policy
from foreshard.core.simulation.workload import Workload


@dataclass(frozen=True)
class SimConfig:
    capacity: float  # messages/s one shard consumes
    lead_s: float = 120.0  # from requesting a pod to it serving its slots
    slo_s: float = 30.0  # oldest unconsumed message must be younger than this
    slots: int = 1024
    pause_per_move_s: float = 1.0


@dataclass(frozen=True)
class Trajectory:
    """Per-step state, for plots and for the metrics."""

    arrivals: FloatArray
    served: FloatArray
    backlog: FloatArray
    replicas: FloatArray
    ready: FloatArray


@dataclass(frozen=True)
class SimResult:
    policy: str
    knob: float
    slo_violation_minutes: float
    shard_hours: float
    scale_events: int
    moves: int
    max_pause_s: float
    trajectory: Trajectory

    def summary(self) -> dict[str, float]:
        return {
            "knob": self.knob,
            "slo_violation_minutes": self.slo_violation_minutes,
            "shard_hours": round(self.shard_hours, 3),
            "scale_events": self.scale_events,
            "moves": self.moves,
            "max_pause_s": self.max_pause_s,
        }


def balanced_moves(slots: int, before: int, after: int) -> int:
    """Slots that change owner going from `before` to `after` balanced shards, keeping the rest."""
    if before <= 0 or after <= 0:
        return 0 if before == after else slots
    kept = 0
    for shard in range(min(before, after)):
        old = slots // before + (shard < slots % before)
        new = slots // after + (shard < slots % after)
        kept += min(old, new)
    return slots - kept


class _Fleet:
    """Requested pods, the ready ones, and the pods still starting (oldest first)."""

    def __init__(self, replicas: int, lead_steps: int, slots: int) -> None:
        self.replicas = replicas
        self.ready = replicas
        self._lead = lead_steps
        self._slots = slots
        self._starting: deque[tuple[int, int]] = deque()

    def become_ready(self, step: int) -> int:
        """Moves made as pods due by `step` take their slots."""
        before = self.ready
        while self._starting and self._starting[0][0] <= step:
            self.ready += self._starting.popleft()[1]
        return balanced_moves(self._slots, before, self.ready) if self.ready != before else 0

    def scale(self, step: int, replicas: int) -> int:
        """Set the replicas; returns the moves made by draining removed ready shards."""
        if replicas > self.replicas:
            self._starting.append((step + self._lead, replicas - self.replicas))
            self.replicas = replicas
            return 0
        surplus = self.replicas - replicas
        while surplus and self._starting:  # the newest pods are the highest ordinals
            due, count = self._starting.pop()
            taken = min(count, surplus)
            surplus -= taken
            if count > taken:
                self._starting.append((due, count - taken))
        self.replicas = replicas
        before, self.ready = self.ready, self.ready - surplus
        return balanced_moves(self._slots, before, self.ready) if surplus else 0


def simulate(workload: Workload, policy: Policy, config: SimConfig) -> SimResult:
    dt = workload.step_s
    arrivals = workload.arrivals
    first_rate = float(arrivals[0]) / dt if len(arrivals) else 0.0
    fleet = _Fleet(policy.initial_replicas(first_rate), math.ceil(config.lead_s / dt - 1e-9), config.slots)
    steps = len(arrivals)
    served, backlog_at = np.zeros(steps), np.zeros(steps)
    replicas_at, ready_at = np.zeros(steps), np.zeros(steps)
    backlog, events, moves, lost = 0.0, 0, 0, 0.0
    obs = Observation(fleet.replicas, fleet.ready, 0.0, 0.0, 0.0)
    per_move = config.pause_per_move_s / config.slots
    for step, arrived in enumerate(arrivals.tolist()):
        moved = fleet.become_ready(step)
        moves += moved
        lost += moved * per_move * fleet.ready * config.capacity
        service = max(fleet.ready * config.capacity * dt - lost, 0.0)
        lost = max(lost - fleet.ready * config.capacity * dt, 0.0)
        done = min(backlog + arrived, service)
        backlog += arrived - done
        served[step], backlog_at[step] = done, backlog
        replicas_at[step], ready_at[step] = fleet.replicas, fleet.ready
        obs.replicas, obs.ready, obs.backlog = fleet.replicas, fleet.ready, backlog
        obs.arrival_rate, obs.served_rate = arrived / dt, done / dt
        wanted = policy.decide(step, obs)
        if wanted != fleet.replicas:
            events += 1
            moved = fleet.scale(step + 1, wanted)
            moves += moved
            lost += moved * per_move * fleet.ready * config.capacity
    trajectory = Trajectory(arrivals, served, backlog_at, replicas_at, ready_at)
    return SimResult(
        policy=policy.name,
        knob=policy.knob,
        slo_violation_minutes=violation_minutes(trajectory, dt, config.slo_s),
        shard_hours=float(replicas_at.sum() * dt / 3600.0),
        scale_events=events,
        moves=moves,
        max_pause_s=config.pause_per_move_s if moves else 0.0,
        trajectory=trajectory,
    )


def oldest_age(trajectory: Trajectory, step_s: float) -> FloatArray:
    """Age (s) of the oldest unconsumed message at the end of every step (0 when none waits).

    Arrivals are uniform within a step, so cumulative arrivals are piecewise linear and the
    oldest waiting message is where they reach the cumulative count consumed.
    """
    arrived = np.concatenate(([0.0], np.cumsum(trajectory.arrivals)))
    consumed = np.cumsum(trajectory.served)
    index = np.clip(np.searchsorted(arrived, consumed, side="right"), 1, len(arrived) - 1)
    low, high = arrived[index - 1], arrived[index]
    fraction = np.where(high > low, (consumed - low) / np.maximum(high - low, 1e-300), 0.0)
    born = (index - 1 + fraction) * step_s
    ends = step_s * np.arange(1, len(consumed) + 1)
    waiting = trajectory.backlog > 1e-6 * np.maximum(1.0, trajectory.arrivals)
    return np.where(waiting, np.maximum(ends - born, 0.0), 0.0)


def violation_minutes(trajectory: Trajectory, step_s: float, slo_s: float) -> float:
    """Minutes (of replay time) in which the oldest unconsumed message was older than the SLO."""
    if len(trajectory.arrivals) == 0:
        return 0.0
    ages = oldest_age(trajectory, step_s)
    minute = np.floor(step_s * np.arange(len(ages)) / 60.0).astype(np.int64)
    return float(len(np.unique(minute[ages > slo_s])))
