"""Move schedule: bounded concurrency and bytes/s, drains first, done before the ramp it serves.

Moves off the highest ordinals go first (a StatefulSet removes its highest ordinals, so those
must be empty before scale-in), then heavier items, then by name for determinism. Moves run in
waves of at most `max_concurrent`; a wave lasts as long as its largest copy at the per-move share
of the bytes/s budget. The schedule starts in the predicted trough when it still finishes before
the deadline (the ramp), otherwise as soon as allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from foreshard.core.planning.placement import Move


@dataclass(frozen=True)
class MovePolicy:
    max_concurrent: int = 4
    bytes_per_s: float = 50e6  # copy budget shared by concurrent moves
    pause_s: float = 1.0  # fence-to-resume pause of one move


@dataclass(frozen=True)
class ScheduledMove:
    move: Move
    wave: int
    start_s: float  # seconds from now


@dataclass(frozen=True)
class Schedule:
    moves: tuple[ScheduledMove, ...]
    duration_s: float
    meets_deadline: bool


def order(moves: Sequence[Move]) -> list[Move]:
    return sorted(moves, key=lambda m: (-m.source, -m.load, m.item))


def schedule_moves(
    moves: Sequence[Move],
    backlog_bytes: Mapping[str, float],
    policy: MovePolicy,
    deadline_s: float | None = None,
    trough_s: float | None = None,
) -> Schedule:
    """Waves of moves with start times; `backlog_bytes` per item is what each copy carries."""
    if policy.max_concurrent < 1 or policy.bytes_per_s <= 0:
        raise ValueError("max_concurrent must be >= 1 and bytes_per_s positive")
    ordered = order(moves)
    share = policy.bytes_per_s / policy.max_concurrent
    waves = [ordered[i : i + policy.max_concurrent] for i in range(0, len(ordered), policy.max_concurrent)]
    lengths = [max(backlog_bytes.get(m.item, 0.0) for m in wave) / share + policy.pause_s for wave in waves]
    total = sum(lengths)
    start = 0.0
    if trough_s is not None and (deadline_s is None or trough_s + total <= deadline_s):
        start = trough_s
    scheduled: list[ScheduledMove] = []
    for number, (wave, length) in enumerate(zip(waves, lengths, strict=True)):
        scheduled.extend(ScheduledMove(m, number, start) for m in wave)
        start += length
    meets = deadline_s is None or start <= deadline_s
    return Schedule(tuple(scheduled), start, meets)
