"""From a placement to migrations: a bounded move list, admitted a few at a time.

    placement.moves --check (never a partial plan)--> moves.schedule_moves (waves, bytes/s,
        trough before the ramp when avoidPredictedPeaks) --admit (free slots of
        maxConcurrentMoves, not already moving, start time reached)--> new Migrations in Prepare

A plan the shards cannot hold (over capacity, a key larger than one shard) yields a message for a
condition and no move at all. Migration ids are content hashes of (plan, item, source, target), so
the same plan admitted again on a later pass names the same migration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from foreshard.api.migration import Item, Migration, Phase
from foreshard.core.planning.moves import MovePolicy, Schedule, schedule_moves
from foreshard.core.planning.placement import UNOWNED, Move, Placement


@dataclass(frozen=True)
class MigrationLimits:
    """spec.migration."""

    max_concurrent: int = 4
    bytes_per_s: float = 50e6
    pause_budget_s: float = 0.5
    avoid_peaks: bool = False


def impossible(placement: Placement) -> str | None:
    """Why the placement cannot be carried out (for a condition), or None when it can."""
    if placement.unsplittable:
        keys = ", ".join(placement.unsplittable[:5])
        return (
            f"key(s) {keys} alone exceed one shard's capacity; strict order forbids splitting them, "
            "so raise the per-shard capacity or lower their load"
        )
    if not placement.within_capacity:
        return "the planned load does not fit the shards within capacity; raise maxShards or the capacity"
    if any(move.source == UNOWNED for move in placement.moves):
        return "the placement moves items that no shard owns; the routing table is incomplete"
    return None


def plan(
    placement: Placement,
    backlog_bytes: Mapping[str, float],
    limits: MigrationLimits,
    deadline_s: float | None = None,
    trough_s: float | None = None,
) -> Schedule | None:
    """The move schedule of a placement, or None when it is impossible (see `impossible`)."""
    if impossible(placement) is not None:
        return None
    policy = MovePolicy(limits.max_concurrent, limits.bytes_per_s, limits.pause_budget_s)
    trough = trough_s if limits.avoid_peaks else None
    return schedule_moves(placement.moves, backlog_bytes, policy, deadline_s, trough)


def migration_id(plan_id: str, move: Move) -> str:
    digest = hashlib.sha256(f"{plan_id}/{move.item}/{move.source}->{move.target}".encode()).hexdigest()
    return f"m-{digest[:12]}"


def admit(
    schedule: Schedule,
    in_flight: Sequence[Migration],
    limits: MigrationLimits,
    plan_id: str,
    planned_at_s: float,
    now_s: float,
) -> list[Migration]:
    """New migrations to start now: within maxConcurrentMoves, one per item, in schedule order,
    each once its scheduled start (seconds after `planned_at_s`) has come."""
    active = [m for m in in_flight if not m.terminal]
    moving = {str(m.item) for m in active}
    known = {m.id for m in in_flight}
    free = limits.max_concurrent - len(active)
    admitted: list[Migration] = []
    for scheduled in schedule.moves:
        move = scheduled.move
        if len(admitted) >= free or planned_at_s + scheduled.start_s > now_s:
            break
        name = migration_id(plan_id, move)
        if move.item in moving or name in known:
            continue
        item = Item.parse(move.item)
        admitted.append(
            Migration(
                name, item, move.source, move.target, Phase.PREPARE, phase_since_s=now_s, started_at_s=now_s
            )
        )
    return admitted


def copy_bytes_per_pass(limits: MigrationLimits, pass_interval_s: float) -> int:
    """One copy-ahead round's share of the bytes/s throttle (moves share it equally)."""
    return max(1, int(limits.bytes_per_s / limits.max_concurrent * pass_interval_s))


MAX_LISTED = 128  # moves listed in status.plan.moveList (the CRD's bound); `moves` counts them all


def preview(
    placement: Placement,
    backlog_bytes: Mapping[str, float],
    limits: MigrationLimits,
    measured_pause_ms: Sequence[float],
    why: str,
) -> dict[str, Any]:
    """status.plan's move part for DryRun, Approve and Auto alike: the moves the placement needs,
    in schedule order with their wave and size, the expected pause per move and why.

    The expected pause is the median pause of recent moves of this queue when there are some,
    else the pause budget (a move over it is rolled back, so it bounds what a key sees)."""
    reason = impossible(placement)
    if reason is not None:
        return {"moves": 0, "moveList": [], "movedBytes": 0, "movesWhy": f"impossible: {reason}"}
    schedule = plan(placement, backlog_bytes, limits)
    assert schedule is not None  # possible, checked above
    listed = []
    for scheduled in schedule.moves[:MAX_LISTED]:
        move = scheduled.move
        item = Item.parse(move.item)
        entry: dict[str, Any] = {"source": move.source, "target": move.target, "wave": scheduled.wave}
        entry.update({"slot": item.slot} if item.slot is not None else {"key": item.key})
        entry["bytes"] = int(backlog_bytes.get(move.item, 0.0))
        listed.append(entry)
    pauses = sorted(measured_pause_ms)
    expected = pauses[len(pauses) // 2] if pauses else limits.pause_budget_s * 1000
    basis = f"median of {len(pauses)} recent moves" if pauses else "the pause budget (no move measured yet)"
    return {
        "moves": len(schedule.moves),
        "moveList": listed,
        "movedBytes": int(sum(backlog_bytes.get(m.move.item, 0.0) for m in schedule.moves)),
        "waves": max((m.wave for m in schedule.moves), default=-1) + 1,
        "expectedPauseMs": round(expected, 1),
        "movesWhy": f"{why}; expected pause per move {expected:.0f} ms ({basis})",
    }
