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

    @property
    def settled(self) -> bool:
        return not self._starting

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


class _Replay:
    """The mutable state of one replay; `run` advances it step by step, skipping quiet stretches.

    A stretch is quiet when nothing waits, no pod is starting, no pause is pending, the arrivals
    stay those of the current trace step and the policy vouches (`Policy.quiet`) that it would
    keep answering the same replicas: every step of it would repeat the last one exactly.
    """

    def __init__(self, workload: Workload, policy: Policy, config: SimConfig) -> None:
        self.workload, self.policy, self.config = workload, policy, config
        dt, steps = workload.step_s, len(workload.arrivals)
        first_rate = float(workload.arrivals[0]) / dt if steps else 0.0
        lead_steps = math.ceil(config.lead_s / dt - 1e-9)
        self.fleet = _Fleet(policy.initial_replicas(first_rate), lead_steps, config.slots)
        self.served, self.backlog_at = np.zeros(steps), np.zeros(steps)
        self.replicas_at, self.ready_at = np.zeros(steps), np.zeros(steps)
        self.backlog, self.events, self.moves, self.lost = 0.0, 0, 0, 0.0
        self.obs = Observation(self.fleet.replicas, self.fleet.ready, 0.0, 0.0, 0.0)

    def _account(self, moved: int) -> None:
        self.moves += moved
        self.lost += (
            moved * self.config.pause_per_move_s / self.config.slots * self.fleet.ready * self.config.capacity
        )

    def step(self, step: int, arrived: float) -> bool:
        """One step; True when it ended quiet (nothing waiting, nothing starting, no change)."""
        fleet, dt = self.fleet, self.workload.step_s
        self._account(fleet.become_ready(step))
        budget = fleet.ready * self.config.capacity * dt
        done = min(self.backlog + arrived, max(budget - self.lost, 0.0))
        self.lost = max(self.lost - budget, 0.0)
        self.backlog += arrived - done
        self.served[step], self.backlog_at[step] = done, self.backlog
        self.replicas_at[step], self.ready_at[step] = fleet.replicas, fleet.ready
        obs = self.obs
        obs.replicas, obs.ready, obs.backlog = fleet.replicas, fleet.ready, self.backlog
        obs.arrival_rate, obs.served_rate = arrived / dt, done / dt
        wanted = self.policy.decide(step, obs)
        if wanted != fleet.replicas:
            self.events += 1
            self._account(fleet.scale(step + 1, wanted))
            return False
        return done == arrived and self.backlog == 0.0 and self.lost == 0.0 and fleet.settled

    def run(self) -> None:
        arrivals = self.workload.arrivals.tolist()
        substeps, step = self.workload.substeps, 0
        while step < len(arrivals):
            if not self.step(step, arrivals[step]):
                step += 1
                continue
            last_same = min((step // substeps + 1) * substeps, len(arrivals)) - 1
            quiet_until = self.policy.quiet(step, self.obs, last_same) if last_same > step else step
            if quiet_until > step:
                span = slice(step + 1, quiet_until + 1)
                self.served[span], self.backlog_at[span] = arrivals[step], 0.0
                self.replicas_at[span], self.ready_at[span] = self.fleet.replicas, self.fleet.ready
            step = quiet_until + 1

    def result(self) -> SimResult:
        trajectory = Trajectory(
            self.workload.arrivals, self.served, self.backlog_at, self.replicas_at, self.ready_at
        )
        dt = self.workload.step_s
        return SimResult(
            policy=self.policy.name,
            knob=self.policy.knob,
            slo_violation_minutes=violation_minutes(trajectory, dt, self.config.slo_s),
            shard_hours=float(self.replicas_at.sum() * dt / 3600.0),
            scale_events=self.events,
            moves=self.moves,
            max_pause_s=self.config.pause_per_move_s if self.moves else 0.0,
            trajectory=trajectory,
        )


def simulate(workload: Workload, policy: Policy, config: SimConfig) -> SimResult:
    replay = _Replay(workload, policy, config)
    replay.run()
    return replay.result()


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
