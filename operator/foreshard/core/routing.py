"""Who routes what: the operator's routing decision for one pass (pure, no I/O).

    recorded status.routing + the shard pods' endpoints + each broker's epoch
        -> record a new table   (first placement, a changed endpoint, a broker ahead of status)
        -> or push the recorded table to the brokers behind it
        -> or nothing (every broker serves the recorded epoch)

Record before push: a table reaches a broker only after it is in `status.routing`, so a restarted
operator always knows the newest epoch any broker may serve, and never pushes one it forgot. The
pass that records does not push; the next pass (one timer interval later) pushes what it reads back.

This module never moves a slot between two shards that both exist: the first placement spreads
all slots over the initial shards, and later tables keep every owner, changing only endpoints and
the epoch. Shards a scale-out adds are listed with their endpoint and own nothing until a migration
(core/migration) moves slots onto them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from foreshard.api import conditions
from foreshard.api.conditions import Condition
from foreshard_broker.routing import RoutingTable


@dataclass(frozen=True)
class Broker:
    """One shard pod as the operator sees it in a pass."""

    shard: int
    endpoint: str | None  # None: the pod has no address yet (not scheduled, no annotation)
    epoch: int | None  # the epoch its broker serves; None when it did not answer


@dataclass(frozen=True)
class PushFailure:
    message: str
    refused: bool  # the broker answered and said no (bad table, stale epoch), not merely away


@dataclass(frozen=True)
class RoutingDecision:
    table: RoutingTable | None  # what status.routing holds after this pass (None: nothing yet)
    record: bool  # the table is new: write it to status now, push it next pass
    push: tuple[int, ...]  # shards to push the recorded table to in this pass
    waiting: tuple[int, ...]  # shards with no endpoint yet
    unreachable: tuple[int, ...]  # shards whose broker did not answer


def initial_owners(num_slots: int, shards: int) -> tuple[int, ...]:
    """All slots over `shards` in contiguous, equal runs (sizes differ by at most one).

    With no load observed every slot weighs the same, so equal runs are the balanced placement,
    and contiguous ones keep status.routing to one range per shard. Load-aware placement is the
    migration planner's work, which starts from this table.
    """
    return tuple(slot * shards // num_slots for slot in range(num_slots))


def floor(table: RoutingTable | None) -> int:
    """The fewest shards that keep every owner alive: scale-in below it would delete data."""
    if table is None:
        return 0
    owners = {*table.slot_owners, *table.pinned.values()}
    return max(owners) + 1 if owners else 0


def decide(
    recorded: RoutingTable | None, num_slots: int, shards: int, brokers: Mapping[int, Broker]
) -> RoutingDecision:
    """The pass's routing step for a queue of `shards` shard pods (ordinals 0..shards-1)."""
    present = [brokers[s] for s in range(shards) if s in brokers]
    endpoints = {b.shard: b.endpoint for b in present if b.endpoint}
    waiting = tuple(s for s in range(shards) if s not in endpoints)
    unreachable = tuple(b.shard for b in present if b.endpoint and b.epoch is None)
    newest_seen = max((b.epoch or 0 for b in present), default=0)
    if recorded is None:
        if waiting or not shards:
            return RoutingDecision(None, False, (), waiting, unreachable)
        # Above anything a broker serves: a status lost with the CR's old incarnation cannot
        # make the operator push an epoch the brokers refuse as stale.
        table = RoutingTable(newest_seen + 1, num_slots, initial_owners(num_slots, shards), {}, endpoints)
        return RoutingDecision(table, True, (), waiting, unreachable)
    merged = _merged_endpoints(recorded, endpoints, shards)
    if merged != dict(recorded.endpoints) or newest_seen > recorded.epoch:
        epoch = max(recorded.epoch, newest_seen) + 1
        return RoutingDecision(
            replace(recorded, epoch=epoch, endpoints=merged), True, (), waiting, unreachable
        )
    behind = tuple(
        b.shard for b in present if b.endpoint and b.epoch is not None and b.epoch < recorded.epoch
    )
    return RoutingDecision(recorded, False, behind, waiting, unreachable)


def _merged_endpoints(recorded: RoutingTable, seen: Mapping[int, str], shards: int) -> dict[int, str]:
    """Seen endpoints win; an owner keeps its recorded endpoint while its pod is away (a restart),
    and a shard that owns nothing and whose pod is gone (scaled away) leaves the table."""
    owners = {*recorded.slot_owners, *recorded.pinned.values()}
    kept = {s: e for s, e in recorded.endpoints.items() if s in owners or s < shards}
    return dict(sorted({**kept, **seen}.items()))


def report(decision: RoutingDecision, failures: Mapping[int, PushFailure]) -> Condition:
    """The Routed condition after the pass's pushes (`failures`: shard -> why its push failed)."""
    table = decision.table
    if table is None:
        waiting = ", ".join(map(str, decision.waiting)) or "none"
        return Condition(
            conditions.ROUTED,
            "False",
            "WaitingForBrokers",
            f"No routing table yet: shard pods {waiting} have no broker endpoint.",
        )
    if decision.record:
        return Condition(
            conditions.ROUTED,
            "False",
            "RoutingRecorded",
            f"Routing epoch {table.epoch} recorded; the next pass pushes it to the brokers.",
        )
    lagging = sorted({*decision.unreachable, *failures})
    refused = sorted(s for s, failure in failures.items() if failure.refused)
    if refused:
        first = refused[0]
        return Condition(
            conditions.ROUTED,
            "False",
            "RoutingRefused",
            f"Shard {first} refused routing epoch {table.epoch}: {failures[first].message}",
        )
    if lagging or decision.waiting:
        behind = ", ".join(map(str, sorted({*lagging, *decision.waiting})))
        detail = "; ".join(f"shard {s}: {failures[s].message}" for s in sorted(failures))
        return Condition(
            conditions.ROUTED,
            "False",
            "BrokersLagging",
            f"Shards {behind} do not serve routing epoch {table.epoch} yet (unreachable or not "
            f"started); the operator retries every pass.{' ' + detail if detail else ''}",
        )
    return Condition(
        conditions.ROUTED,
        "True",
        "BrokersRouted",
        f"Every shard serves routing epoch {table.epoch} ({len(table.endpoints)} brokers).",
    )
