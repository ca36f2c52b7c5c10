"""Consumer-side prediction: a group's backlog ahead, and the replicas that keep it drained. Pure.

    arrivals forecast (the queue's demand) - acks forecast (the group's own history)
        --backlog_path--> predicted backlog per step, from the backlog now
    peak arrivals over [0, horizon] + backlog predicted at now + lead / drainTime
        --/ messagesPerSecondPerReplica--> target replicas (clamped)
    lower than now? --held for scaleDownStabilization (previous status entry)--> proposed
    mode: Auto applies; DryRun records; Approve applies once foreshard.io/approve-plan names the id

The acknowledgement forecast is what the group did with the replicas it had, so the backlog it
predicts is the backlog if nothing changes: the reason to scale ahead of it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from foreshard.api.consumers import ConsumerGroup
from foreshard.core.forecasting.types import Forecast
from foreshard.core.series import FloatArray


@dataclass(frozen=True)
class GroupPolicy:
    mode: str  # Auto, DryRun or Approve
    lead_s: float
    horizon_s: float
    stabilization_s: float
    quantile: float
    approved: frozenset[str] = frozenset()  # plan ids named by foreshard.io/approve-plan


@dataclass(frozen=True)
class GroupDecision:
    name: str
    backlog: float
    predicted_arrivals: float  # msg/s, planning-quantile peak over the horizon
    predicted_acks: float  # msg/s, mean over the horizon
    predicted_backlog: float  # messages at now + lead if nothing changes
    replicas: int | None  # what the scale target should run after this pass (None: no target)
    target: int | None
    plan_id: str | None
    decided_at: str | None
    why: str

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "backlog": round(self.backlog, 3),
            "predictedArrivals": round(self.predicted_arrivals, 4),
            "predictedAcks": round(self.predicted_acks, 4),
            "predictedBacklog": round(self.predicted_backlog, 3),
            "why": self.why[:1024],
        }
        extra: dict[str, Any] = {"replicas": self.replicas, "targetReplicas": self.target}
        extra |= {"planId": self.plan_id, "decidedAt": self.decided_at}
        return out | {k: v for k, v in extra.items() if v is not None}


def backlog_path(backlog: float, arrivals: FloatArray, acks: FloatArray) -> FloatArray:
    """Backlog after each step: what arrives minus what is acknowledged, never below zero."""
    out = np.empty(len(arrivals))
    level = max(backlog, 0.0)
    for i, (a, k) in enumerate(zip(arrivals.tolist(), acks.tolist(), strict=True)):
        level = max(0.0, level + a - k)
        out[i] = level
    return out


def _window(forecast: Forecast, now_s: float, end_s: float) -> np.ndarray:
    starts = forecast.start_s + forecast.step_s * np.arange(len(forecast.mean))
    inside = (starts + forecast.step_s > now_s) & (starts <= now_s + end_s)
    return np.asarray(inside)


def predict(
    backlog: float, arrivals: Forecast, acks: Forecast, now_s: float, policy: GroupPolicy
) -> tuple[float, float, float]:
    """(peak arrival msg/s, mean ack msg/s, backlog at now + lead) over the policy's horizon."""
    steps = min(len(arrivals.mean), len(acks.mean))
    upper = arrivals.quantile(policy.quantile) if policy.quantile in arrivals.quantiles else arrivals.mean
    window = _window(arrivals, now_s, policy.horizon_s)[:steps]
    peak = float(upper[:steps][window].max() / arrivals.step_s) if window.any() else 0.0
    mean_acks = float(acks.mean[:steps][window].mean() / acks.step_s) if window.any() else 0.0
    path = backlog_path(backlog, arrivals.mean[:steps], acks.mean[:steps])
    # the forecast starts where the history ends, at or before now: the backlog after the step
    # that holds now + lead (a step cut by it counts whole: the safe side)
    at = min(steps - 1, max(0, math.ceil((now_s + policy.lead_s - arrivals.start_s) / arrivals.step_s) - 1))
    return peak, mean_acks, float(path[at]) if steps else backlog


def target_replicas(group: ConsumerGroup, peak: float, predicted_backlog: float) -> int:
    """Replicas that keep up with the peak and work the predicted backlog off within drainTime."""
    assert group.per_replica is not None  # the CRD requires it with a scaleTargetRef
    needed = peak + predicted_backlog / max(group.drain_s, 1.0)
    wanted = math.ceil(round(needed / group.per_replica, 9))
    return min(max(wanted, group.min_replicas), group.max_replicas)


def plan_id(queue: str, group: str, current: int, target: int) -> str:
    return hashlib.sha256(f"{queue}/{group}:{current}->{target}".encode()).hexdigest()[:12]


def decide(
    queue: str,
    group: ConsumerGroup,
    observed: tuple[float, Forecast, Forecast],
    current: int | None,
    previous: Mapping[str, Any],
    now_s: float,
    policy: GroupPolicy,
) -> GroupDecision:
    """The group's prediction, and its workload's replicas when it names one that exists."""
    backlog, arrivals, acks = observed
    peak, mean_acks, ahead = predict(backlog, arrivals, acks, now_s, policy)
    base = GroupDecision(group.name, backlog, peak, mean_acks, ahead, None, None, None, None, "")
    if group.target is None or current is None:
        missing = (
            "no scaleTargetRef"
            if group.target is None
            else f"{group.target.kind} {group.target.name} not found"
        )
        return _with(base, why=f"{missing}: forecast exported as metrics only")
    target = target_replicas(group, peak, ahead)
    same = previous.get("targetReplicas") == target and previous.get("decidedAt")
    decided_at = str(previous["decidedAt"]) if same else _stamp(now_s)
    proposed = _stabilized(current, target, decided_at, now_s, policy)
    pid = plan_id(queue, group.name, current, target)
    replicas, held = _mode(current, proposed, pid, policy)
    why = (
        f"{current} -> {target} replicas for q{policy.quantile:g} peak {peak:.2f} msg/s and a backlog of "
        f"{ahead:.0f} predicted at +{policy.lead_s:g}s (drain in {group.drain_s:g}s) at "
        f"{group.per_replica:g} msg/s per replica"
    )
    return _with(
        base, replicas=replicas, target=target, plan_id=pid, decided_at=decided_at, why=f"{why}{held}"
    )


def _stabilized(current: int, target: int, decided_at: str, now_s: float, policy: GroupPolicy) -> int:
    if target >= current:
        return target
    since = datetime.fromisoformat(decided_at.replace("Z", "+00:00")).timestamp()
    return target if now_s - since >= policy.stabilization_s else current


def _mode(current: int, proposed: int, pid: str, policy: GroupPolicy) -> tuple[int, str]:
    if proposed == current:
        return current, ""
    if policy.mode == "DryRun":
        return current, "; DryRun: recorded only"
    if policy.mode == "Approve" and pid not in policy.approved:
        return current, f"; awaiting approval: annotate the queue with foreshard.io/approve-plan={pid}"
    return proposed, ""


def _with(base: GroupDecision, **changes: Any) -> GroupDecision:
    from dataclasses import replace

    return replace(base, **changes)


def _stamp(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
