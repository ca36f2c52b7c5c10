"""The migration state machine: `step(migration, observation, policy) -> (migration, action | None)`.

One slot or pinned key moves from shard A (source) to shard B (target), DESIGN §4:

               last copy round small     fence held, inflight settled,        epoch recorded
    admit -> +---------+  enough  +-------+ pause within budget   +--------+  with its table  +--------+
             | Prepare | -------> | Fence | --------------------> | Switch | ---------------> | Resume |
             +---------+          +-------+ (delta + group state) +--------+  A, then B       +--------+
               ^    | failure,       | fence failed, unsettled,     (roll forward only:          | others
               |    | timeout        | over budget, timeout          failed pushes retried)      | pushed
               |    v                v                                                           v
               |  +-------------+  A unfenced (or lease lapsed),    +-------+  A released  +------+
               +--| RollingBack |  B's copy discarded               | Drain | -----------> | Done |
      retryable,  +-------------+                                   +-------+              +------+
      attempts left      | otherwise
                         v
                   +------------+
                   | RolledBack |
                   +------------+

The caller records the migration returned (status.migrations[], with the resource version as a
precondition) *before* performing the action, and feeds the action's `Result` into the next step's
observation. A fresh process has no result: it performs the recorded phase's action again, which
every action allows (see actions.py). Invariants (tests/unit/test_migration_machine.py):
* Done and RolledBack are terminal, and a migration reaches at most one of them;
* nothing is rolled back once Switch is recorded (the new table may already be served);
* at every moment exactly one shard serves the item: A until the switch (fenced or not), B after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from foreshard.api.migration import BEFORE_SWITCH, Item, Migration, Phase
from foreshard.core.migration.actions import (
    Action,
    CopyAhead,
    Fence,
    PushRouting,
    Release,
    RollBack,
    Switch,
)
from foreshard_broker.routing import RoutingTable

# Reasons a rollback may be retried later (the move is still wanted and may fit next time).
RETRYABLE = ("PauseBudgetExceeded", "InflightUnsettled", "Unreachable", "PhaseTimeout", "FenceFailed")


@dataclass(frozen=True)
class Result:
    """What the adapter saw performing the last action of this migration (in this process)."""

    ok: bool
    error: str = ""
    refused: bool = False  # the broker answered and refused: retrying the same call will not help
    copied: int = 0  # messages a copy imported
    through: int = 0  # the next source offset to copy from (copies and fences)
    inflight: int = 0  # fence: deliveries still unacked when the group state was taken
    pause_ms: float = 0.0  # fence: fence + delta import; switch: the whole pause, fence to B serving
    lease_lapsing: bool = False  # rollback: A was unreachable, its lease lapses by itself
    bytes: int = 0  # copies and fences: keys and payloads carried to the target
    elapsed_ms: float = 0.0  # copies: how long the copy took
    settled_ms: float = 0.0  # fence: the part of pause_ms spent waiting for in-flight acks


@dataclass(frozen=True)
class Observation:
    now_s: float
    table: RoutingTable  # status.routing as recorded: what Switch builds on
    result: Result | None = None
    epochs: Mapping[int, int | None] = field(default_factory=dict)  # shard -> epoch (None: unreachable)


@dataclass(frozen=True)
class Policy:
    pause_budget_s: float = 0.5
    lease_ttl_s: float = 10.0
    settle_fraction: float = 0.5  # of the pause budget, to wait for in-flight deliveries
    switch_estimate_s: float = 0.01  # what pushing the table adds to the pause
    catch_up_messages: int = 1000  # a copy-ahead round that copied fewer: fence next
    copy_bytes: int = 0  # per copy-ahead round (the bytes/s throttle's share; 0: unlimited)
    max_failures: int = 5  # failed actions in a row before Prepare rolls back
    phase_timeout_s: float = 600.0  # Prepare or Fence longer than this rolls back
    max_attempts: int = 3
    retry_after_s: float = 60.0

    @property
    def settle_s(self) -> float:
        return self.pause_budget_s * self.settle_fraction


Step = tuple[Migration, Action | None]


def step(m: Migration, seen: Observation, policy: Policy) -> Step:
    """The next recorded state of `m` and the one action to perform after recording it."""
    if m.terminal:
        return m, None
    if m.phase in BEFORE_SWITCH and seen.now_s - m.phase_since_s > policy.phase_timeout_s:
        return _roll_back(m, seen, f"PhaseTimeout: {m.phase} for more than {policy.phase_timeout_s:.0f}s")
    return _PHASES[m.phase](m, seen, policy)


def _prepare(m: Migration, seen: Observation, policy: Policy) -> Step:
    result = seen.result
    if result is None:
        if m.attempt > 1 and seen.now_s < m.phase_since_s + policy.retry_after_s:
            return m, None  # a retried attempt waits before it copies again
        return m, _copy(m, policy)
    if not result.ok:
        return _failed_before_switch(m, seen, policy, result)
    m = replace(
        m,
        copied_through=max(m.copied_through, result.through),
        failures=0,
        copied_bytes=m.copied_bytes + result.bytes,
        copy_ms=m.copy_ms + result.elapsed_ms,
    )
    if result.copied >= policy.catch_up_messages:
        return m, _copy(m, policy)  # still far behind: another round while A serves
    m = m.entering(Phase.FENCE, seen.now_s, f"copied ahead through offset {m.copied_through}")
    return m, _fence(m, policy)


def _fence_phase(m: Migration, seen: Observation, policy: Policy) -> Step:
    result = seen.result
    if result is None:
        return m, _fence(m, policy)  # again after a restart: renews the lease, re-exports
    if not result.ok:
        reason = "ImportRefused" if result.refused else "FenceFailed"
        return _roll_back(m, seen, f"{reason}: {result.error}")
    if result.inflight:
        return _roll_back(m, seen, f"InflightUnsettled: {result.inflight} deliveries not acked in time")
    projected_s = result.pause_ms / 1000 + policy.switch_estimate_s
    if projected_s > policy.pause_budget_s:
        return _roll_back(
            m,
            seen,
            f"PauseBudgetExceeded: the pause would be {projected_s * 1000:.0f} ms, "
            f"over the budget of {policy.pause_budget_s * 1000:.0f} ms",
        )
    table = switched(seen.table, m)
    m = m.entering(
        Phase.SWITCH,
        seen.now_s,
        f"fenced in {result.pause_ms:.1f} ms",
        epoch=table.epoch,
        copied_through=max(m.copied_through, result.through),
        pause_ms=result.pause_ms,
        fence_ms=result.pause_ms,
        settle_ms=result.settled_ms,
        copied_bytes=m.copied_bytes + result.bytes,
        copy_ms=m.copy_ms + result.pause_ms,
    )
    return m, Switch(m.id, m.item, m.source, m.target, table, m.copied_through)


def _switch_phase(m: Migration, seen: Observation, policy: Policy) -> Step:
    table = switched(seen.table, m)
    result = seen.result
    if result is None and not _serve_epoch(seen, m, (m.source, m.target)):
        return m, Switch(m.id, m.item, m.source, m.target, table, m.copied_through)
    if result is not None and not result.ok:
        # Roll forward only: the table may already be served. Retried on the next pass.
        return replace(m, failures=m.failures + 1, reason=f"switch not complete: {result.error}"), None
    pause = result.pause_ms if result is not None and result.pause_ms else m.pause_ms
    m = m.entering(Phase.RESUME, seen.now_s, f"epoch {m.epoch} served by shards {m.source} and {m.target}")
    m = replace(m, pause_ms=pause)
    lagging = _lagging(seen, m, table)
    return m, PushRouting(m.id, table, lagging) if lagging else None


def _resume(m: Migration, seen: Observation, policy: Policy) -> Step:
    table = switched(seen.table, m)
    lagging = _lagging(seen, m, table)
    if seen.result is None and lagging:
        return m, PushRouting(m.id, table, lagging)
    # One push to the other shards is enough: a client they misroute is answered MOVED by A.
    m = m.entering(Phase.DRAIN, seen.now_s, f"shard {m.target} serves {m.item}")
    return m, Release(m.id, m.item, m.source)


def _drain(m: Migration, seen: Observation, policy: Policy) -> Step:
    result = seen.result
    if result is None:
        return m, Release(m.id, m.item, m.source)
    if not result.ok:
        return replace(m, failures=m.failures + 1, reason=f"release not done: {result.error}"), None
    return m.entering(Phase.DONE, seen.now_s, f"moved to shard {m.target}"), None


def _rolling_back(m: Migration, seen: Observation, policy: Policy) -> Step:
    result = seen.result
    action = RollBack(m.id, m.item, m.source, m.target, m.lease_id)
    if result is None:
        return m, action
    if not result.ok:  # B's copy must go: retried on the next pass, however long B is away
        return replace(
            m, failures=m.failures + 1, reason=f"{m.reason} (discard pending: {result.error})"
        ), None
    if result.lease_lapsing and seen.now_s < m.phase_since_s + policy.lease_ttl_s:
        return m, None  # A could not be unfenced: wait until its lease has lapsed by itself
    if m.reason.startswith(RETRYABLE) and m.attempt < policy.max_attempts:
        retry = m.entering(Phase.PREPARE, seen.now_s, m.reason, attempt=m.attempt + 1, copied_through=0)
        return retry, None
    return m.entering(Phase.ROLLED_BACK, seen.now_s, m.reason), None


def _failed_before_switch(m: Migration, seen: Observation, policy: Policy, result: Result) -> Step:
    if result.refused:
        return _roll_back(m, seen, f"ImportRefused: {result.error}")
    if m.failures + 1 >= policy.max_failures:
        return _roll_back(m, seen, f"Unreachable: {result.error}")
    return replace(m, failures=m.failures + 1, reason=result.error), None


def _roll_back(m: Migration, seen: Observation, reason: str) -> Step:
    m = m.entering(Phase.ROLLING_BACK, seen.now_s, reason)
    return m, RollBack(m.id, m.item, m.source, m.target, m.lease_id)


def _copy(m: Migration, policy: Policy) -> CopyAhead:
    return CopyAhead(m.id, m.item, m.source, m.target, m.copied_through, policy.copy_bytes)


def _fence(m: Migration, policy: Policy) -> Fence:
    return Fence(
        m.id, m.item, m.source, m.target, m.lease_id, policy.lease_ttl_s, m.copied_through, policy.settle_s
    )


def _serve_epoch(seen: Observation, m: Migration, shards: tuple[int, ...]) -> bool:
    return all((seen.epochs.get(shard) or 0) >= m.epoch for shard in shards)


def _lagging(seen: Observation, m: Migration, table: RoutingTable) -> tuple[int, ...]:
    others = sorted(set(table.endpoints) - {m.source, m.target})
    return tuple(shard for shard in others if (seen.epochs.get(shard) or 0) < m.epoch)


def owner(table: RoutingTable, item: Item) -> int:
    if item.key is not None:
        return table.owner_of_key(item.key)
    assert item.slot is not None
    return table.slot_owners[item.slot]


def switched(table: RoutingTable, m: Migration) -> RoutingTable:
    """The table that gives the item to the target: the recorded one if it already does (a
    resumed Switch, or another move's later epoch), else one epoch later."""
    if m.epoch and table.epoch >= m.epoch and owner(table, m.item) == m.target:
        return table
    owners, pins = list(table.slot_owners), dict(table.pinned)
    if m.item.key is not None:
        pins[m.item.key] = m.target
    else:
        assert m.item.slot is not None
        owners[m.item.slot] = m.target
    epoch = max(table.epoch + 1, m.epoch)
    return RoutingTable(epoch, table.num_slots, tuple(owners), pins, dict(table.endpoints))


_PHASES: dict[Phase, Callable[[Migration, Observation, Policy], Step]] = {
    Phase.PREPARE: _prepare,
    Phase.FENCE: _fence_phase,
    Phase.SWITCH: _switch_phase,
    Phase.RESUME: _resume,
    Phase.DRAIN: _drain,
    Phase.ROLLING_BACK: _rolling_back,
}
