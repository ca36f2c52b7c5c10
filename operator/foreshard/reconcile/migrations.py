"""The migration step of a timer pass: advance every move in flight, then plan the next wave.

    status.migrations + status.routing (read at the pass start, with its resourceVersion)
      -> each move in flight (in status order, at most MAX_ADVANCED): advance = step, record, act
         (reconcile/migration.py); a move's Switch records the new table, the next move builds on it
      -> nothing in flight, routing settled, a trigger (core/migration/rebalance.py): loads ->
         placement -> schedule.plan (impossible: a condition, no move) -> schedule.admit
         (maxConcurrentMoves) -> recorded in one write -> each admitted move advanced once
      -> Migrating condition, an Event per transition, metrics

Every write goes through the StatusRecorder (resourceVersion precondition); this step never hands
migrations or routing to kopf's patch, which is applied after the handler returns and would
overwrite what was recorded with what the pass read (docs/design/20261202-migration-orchestration.md).
A conflict (409) ends the step before its action: the next pass starts from what was written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from foreshard.adapters.kube import KubePort, StatusConflict, StatusRecorder
from foreshard.adapters.metrics import MIGRATION_PHASE_AGE, MIGRATIONS_IN_FLIGHT, MOVE_PAUSE, MOVES
from foreshard.api import conditions
from foreshard.api.conditions import Condition
from foreshard.api.migration import Item, Migration, Phase
from foreshard.api.shardallocation import QueueSpec
from foreshard.core.migration import rebalance, schedule
from foreshard.core.migration.machine import Policy, Result, owner
from foreshard.core.migration.rebalance import Loads
from foreshard.core.planning.placement import Move
from foreshard.reconcile.events import Event
from foreshard.reconcile.migration import Advanced, Brokers, advance
from foreshard_broker.routing import RoutingTable

MAX_ADVANCED = 64  # moves stepped per pass: the CRD's bound on maxConcurrentMoves, so none starves
PAUSE_WINDOW = frozenset({Phase.FENCE, Phase.SWITCH})
AFTER_SWITCH = frozenset({Phase.RESUME, Phase.DRAIN})
MOVING = "Moving"


class Session(Brokers, Protocol):
    async def loads(self) -> Loads: ...


class Movers(Protocol):
    def session(self, endpoints: Mapping[int, str]) -> AbstractAsyncContextManager[Session]: ...


@dataclass
class Migrated:
    condition: Condition | None  # None: leave Migrating as it was (the step did not run)
    events: list[Event] = field(default_factory=list)
    migrations: list[Migration] = field(default_factory=list)
    preview: dict[str, Any] | None = None  # status.plan's moves (schedule.preview); None: not computed


def recorded(status: Mapping[str, Any]) -> list[Migration]:
    return [Migration.from_status(item) for item in status.get("migrations") or []]


def in_flight(migrations: list[Migration]) -> list[Migration]:
    return [m for m in migrations if not m.terminal]


def hold(migrations: list[Migration]) -> str | None:
    """Why routing must not push this pass: a move between Fence and Resume owns the pushes."""
    for m in migrations:
        if m.phase in PAUSE_WINDOW:
            return f"move {m.id} of {m.item} (shard {m.source} -> {m.target}) is in {m.phase}"
    return None


def floor(migrations: list[Migration]) -> int:
    """Shards a move in flight still needs (a Drain's source releases its copy after the switch)."""
    return max((max(m.source, m.target) + 1 for m in in_flight(migrations)), default=0)


def policy(spec: QueueSpec, pass_interval_s: float) -> Policy:
    limits = limits_of(spec)
    return Policy(
        pause_budget_s=spec.migration.pause_budget_s,
        copy_bytes=schedule.copy_bytes_per_pass(limits, pass_interval_s),
        retry_after_s=max(5.0, 3 * pass_interval_s),
    )


def limits_of(spec: QueueSpec) -> schedule.MigrationLimits:
    m = spec.migration
    return schedule.MigrationLimits(m.max_concurrent, m.bytes_per_s, m.pause_budget_s, m.avoid_peaks)


@dataclass(frozen=True)
class Inputs:
    spec: QueueSpec
    body: Mapping[str, Any]  # the object as read at the pass start
    table: RoutingTable
    aimed: int  # the shard count the plan aims at (the decision's, below a held scale-in)
    settled: bool  # Routed=True this pass: every broker serves the recorded epoch
    planned: int | None = None  # status.plan.targetShards: the moves it needs go into status.plan


def migrate(
    inputs: Inputs,
    kube: KubePort,
    movers: Movers,
    results: MutableMapping[str, Result],
    pass_interval_s: float,
    finished: MutableMapping[str, Migration] | None = None,
) -> Migrated:
    """`finished`: this queue's moves that ended within SETTLE_S, kept by the process (see
    `remembered`); None keeps nothing beyond status.migrations."""
    memory: MutableMapping[str, Migration] = {} if finished is None else finished
    return asyncio.run(_migrate(inputs, kube, movers, results, pass_interval_s, memory))


def remembered(
    known: list[Migration], finished: MutableMapping[str, Migration], now_s: float
) -> list[Migration]:
    """What planning holds moves against: the recorded moves and the finished ones this process
    still remembers. status.migrations keeps only the 16 newest finished moves (every write carries
    the list); the stickiness filter (rebalance.SETTLE_S) and the already-tried check need every
    move of the last SETTLE_S, or a long wave forgets its first moves and plans them again (seen: 31
    moves back and forth between 2 shards at the end of a taxi replay). A cache only: a restarted
    operator holds against what status keeps."""
    for m in known:
        if m.terminal:
            finished[m.id] = m
    for stale in [i for i, m in finished.items() if now_s - m.phase_since_s > rebalance.SETTLE_S]:
        del finished[stale]
    ids = {m.id for m in known}
    return [*known, *(m for i, m in finished.items() if i not in ids)]


async def _migrate(
    inputs: Inputs,
    kube: KubePort,
    movers: Movers,
    results: MutableMapping[str, Result],
    pass_interval_s: float,
    finished: MutableMapping[str, Migration],
) -> Migrated:
    spec, body = inputs.spec, inputs.body
    queue = (spec.namespace, spec.name)
    status: Mapping[str, Any] = body.get("status") or {}
    recorded_now = recorded(status)
    known = remembered(recorded_now, finished, time.time())
    recorder = StatusRecorder(
        kube, spec.namespace, spec.name, body["metadata"]["resourceVersion"], recorded_now
    )
    rules = policy(spec, pass_interval_s)
    out = Migrated(None)
    table = inputs.table
    planned: Planned | None = None  # None: no planning this pass (moves were in flight)
    try:
        async with movers.session(table.endpoints) as brokers:
            moving = in_flight(known)
            for m in moving[:MAX_ADVANCED]:
                table = await _advance(m, table, recorder, brokers, rules, results, out, queue)
            if not moving:
                planned = await _plan(inputs, recorder, brokers, known, out)
                for m in in_flight(list(recorder.migrations.values())):
                    table = await _advance(m, table, recorder, brokers, rules, results, out, queue)
            if inputs.planned is not None:
                out.preview = await _preview(inputs, inputs.planned, brokers, known)
    except StatusConflict as conflict:
        out.events.append(Event("MoveDeferred", f"{conflict}; the next pass reads it again."))
    out.migrations = list(recorder.migrations.values())
    remembered(out.migrations, finished, time.time())
    out.condition = _condition(out.migrations, status, planned)
    _export(queue, out.migrations)
    return out


async def _advance(
    m: Migration,
    table: RoutingTable,
    recorder: StatusRecorder,
    brokers: Session,
    rules: Policy,
    results: MutableMapping[str, Result],
    out: Migrated,
    queue: tuple[str, str],
) -> RoutingTable:
    """`advance`, again while the move is in Resume or Drain: once switched, nothing is left to
    pace (no copy), so the other shards' push, the source's release and Done need not wait a timer
    interval each. Every step is still recorded before it acts. Returns the table recorded last."""
    for _ in range(1 + len(AFTER_SWITCH)):
        advanced = await advance(m, table, recorder, brokers, rules, time.time, results)
        out.events.extend(_events(queue, advanced))
        table = advanced.table
        if advanced.migration == m or advanced.migration.phase not in AFTER_SWITCH:
            break
        m = advanced.migration
    return table


@dataclass(frozen=True)
class Planned:
    """What planning found: moves admitted (`note` says why), none needed, or an impossible plan."""

    note: str = ""
    impossible: str | None = None
    waiting: bool = False  # routing not settled: no verdict on whether moves are needed


async def _plan(
    inputs: Inputs, recorder: StatusRecorder, brokers: Session, known: list[Migration], out: Migrated
) -> Planned:
    """Admit the next wave when one is due."""
    table, aimed = inputs.table, inputs.aimed
    status: Mapping[str, Any] = inputs.body.get("status") or {}
    why = rebalance.trigger(table, aimed)
    continuing = _previous(status).get("reason") == MOVING
    if why is None and not continuing:
        return Planned()
    if not inputs.settled or any(s not in table.endpoints for s in range(aimed)):
        return Planned(waiting=True)
    loads = await brokers.loads()
    placement = rebalance.propose(table, aimed, loads, inputs.spec.messages_per_second, known, time.time())
    approved = approved_moves(inputs.spec, status, table, aimed)
    if approved is not None:
        if not approved.moves:  # carried out: no other move (a structural need left says so)
            return Planned(impossible=approved.why) if approved.why else Planned()
        placement = replace(placement, moves=approved.moves)
    impossible = schedule.impossible(placement)
    if impossible is not None:
        return Planned(impossible=impossible)
    limits = limits_of(inputs.spec)
    moves = schedule.plan(placement, rebalance.backlog_bytes(loads, placement), limits)
    if moves is None or not moves.moves:
        return Planned()
    now = time.time()
    admitted = schedule.admit(moves, known, limits, rebalance.plan_id(table, aimed), now, now)
    if not admitted:  # this wave was admitted before and every move of it rolled back
        return Planned(impossible=f"{len(moves.moves)} moves planned, each already tried from this table")
    await recorder.admit(admitted)  # recorded before the first copy
    reason = why or "rebalancing in progress"
    weights = "measured load" if loads.known else "uniform load (no broker reported any)"
    for m in admitted:
        out.events.append(
            Event(
                "MoveStarted",
                f"{m.item}: shard {m.source} -> {m.target} ({reason}; {len(moves.moves)} moves planned on "
                f"{weights}).",
            )
        )
    return Planned(note=f"{reason}; {len(moves.moves)} moves planned")


async def _preview(inputs: Inputs, shards: int, brokers: Session, known: list[Migration]) -> dict[str, Any]:
    """The moves the plan's shard count needs from the recorded table, for status.plan (every
    mode: DryRun and Approve show what they would do, Auto what it is doing)."""
    table = inputs.table
    loads = await brokers.loads()
    now = time.time()
    placement = rebalance.propose(table, shards, loads, inputs.spec.messages_per_second, known, now)
    weights = "measured load" if loads.known else "uniform load (no broker reported any)"
    trigger = rebalance.trigger(table, shards)
    why = f"{trigger}; sticky placement on {weights}" if trigger else f"balance on {weights}"
    measured = [m.pause_ms for m in known if m.phase is Phase.DONE and m.pause_ms is not None]
    backlog = rebalance.backlog_bytes(loads, placement)
    return schedule.preview(placement, backlog, limits_of(inputs.spec), measured, why)


@dataclass(frozen=True)
class Approved:
    moves: tuple[Move, ...]  # the approved list's moves still to make (their source owns them)
    why: str = ""  # when none is left but the table still needs moves


def approved_moves(
    spec: QueueSpec, status: Mapping[str, Any], table: RoutingTable, shards: int
) -> Approved | None:
    """Approve mode carries out exactly the approved list (status.plan.approved, see
    reconcile/shardallocation.with_moves), not a placement recomputed at apply time. None: no
    approved list applies (other modes, nothing approved, or a list cut at 128 moves and used up,
    after which the placement moves the rest). Once the list is carried out nothing else moves;
    if the table still needs moves (its shards changed since), `why` says a new plan is needed."""
    plan = status.get("plan") or {}
    approved = plan.get("approved") or {}
    if spec.scaling.mode != "Approve" or not approved or approved.get("id") != spec.approved_plan:
        return None
    listed = approved.get("moveList") or []
    left = []
    for entry in listed:
        item = Item(entry.get("slot"), entry.get("key"))
        if owner(table, item) == entry["source"] and entry["target"] < shards:
            left.append(Move(str(item), int(entry["source"]), int(entry["target"]), 0.0))
    if left or int(approved.get("moves", 0)) > len(listed):
        return Approved(tuple(left)) if left else None
    trigger = rebalance.trigger(table, shards)
    why = (
        f"the approved plan {approved['id']} is carried out, yet {trigger}: "
        "approve the plan that lists the remaining moves"
        if trigger
        else ""
    )
    return Approved((), why)


def _events(queue: tuple[str, str], advanced: Advanced) -> list[Event]:
    m = advanced.migration
    out = []
    for before, after in advanced.transitions:
        if after is Phase.RESUME:
            pause = f"{m.pause_ms:.1f} ms" if m.pause_ms is not None else "unknown"
            out.append(
                Event(
                    "MoveSwitched",
                    f"{m.item}: shard {m.target} serves it from epoch {m.epoch}; pause {pause}.",
                )
            )
            if m.pause_ms is not None:
                MOVE_PAUSE.labels(*queue).observe(m.pause_ms / 1000)
        elif after is Phase.ROLLING_BACK:
            out.append(
                Event("MoveRollingBack", f"{m.item}: shard {m.source} -> {m.target}: {m.reason}", True)
            )
        elif after is Phase.PREPARE and before is Phase.ROLLING_BACK:
            out.append(Event("MoveRetried", f"{m.item}: attempt {m.attempt} after {m.reason}", True))
        elif after is Phase.ROLLED_BACK:
            out.append(Event("MoveRolledBack", f"{m.item}: stays on shard {m.source}: {m.reason}", True))
            MOVES.labels(*queue, "rolled_back").inc()
        elif after is Phase.DONE:
            took = m.phase_since_s - m.started_at_s
            out.append(Event("MoveDone", f"{m.item}: moved shard {m.source} -> {m.target} in {took:.1f} s."))
            MOVES.labels(*queue, "done").inc()
    return out


def _previous(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == conditions.MIGRATING), {})


def _condition(migrations: list[Migration], status: Mapping[str, Any], planned: Planned | None) -> Condition:
    """Moving while moves are in flight or a rebalance is between waves; Idle once planning found
    nothing to move; PlanImpossible (no move at all) when the placement cannot be carried out."""
    moving = in_flight(migrations)
    if moving:
        phases: dict[str, int] = {}
        for m in moving:
            phases[str(m.phase)] = phases.get(str(m.phase), 0) + 1
        counts = ", ".join(f"{n} {phase}" for phase, n in sorted(phases.items()))
        done = sum(m.phase is Phase.DONE for m in migrations)
        rolled = sum(m.phase is Phase.ROLLED_BACK for m in migrations)
        note = f" ({planned.note})" if planned is not None and planned.note else ""
        return Condition(
            conditions.MIGRATING,
            "True",
            MOVING,
            f"{len(moving)} moves in flight: {counts}{note}; recent: {done} done, {rolled} rolled back.",
        )
    if planned is not None and planned.impossible is not None:
        return Condition(conditions.MIGRATING, "False", "PlanImpossible", planned.impossible)
    if (planned is None or planned.waiting) and _previous(status).get("reason") == MOVING:
        return Condition(
            conditions.MIGRATING,
            "True",
            MOVING,
            "A move wave finished; the next pass plans the next one.",
        )
    return Condition(conditions.MIGRATING, "False", "Idle", "No move in flight; the placement needs none.")


def _export(queue: tuple[str, str], migrations: list[Migration]) -> None:
    moving = in_flight(migrations)
    MIGRATIONS_IN_FLIGHT.labels(*queue).set(len(moving))
    now = time.time()
    MIGRATION_PHASE_AGE.labels(*queue).set(max((now - m.phase_since_s for m in moving), default=0.0))
