"""The side effects a migration asks for, one per step; the broker-admin adapter performs them.

Every action is idempotent by contract, because the operator records the phase *before* acting
and may die right after recording: the next pass performs the same action again.

    CopyAhead    B.ImportBacklog(A.ExportBacklog(item, from_offset, max_bytes))
    Fence        B.ImportFenced(A.Fence(lease_id, item, ttl, from_offset, settle)); same lease id
                 again renews the lease and re-exports from the same offset
    Switch       A.UpdateRouting(table) first; if A reports the item taken away unfenced (its lease
                 had lapsed), copy the tail and group state again; then B.UpdateRouting(table)
    PushRouting  UpdateRouting(table) on the other shards (already at the epoch: no-op)
    Release      A.Release(item)
    RollBack     A.Unfence(lease_id) (A unreachable: its lease lapses by itself) and B.Discard(item)

The adapter answers each with a `Result` (see machine.py), which the next step observes.
"""

from __future__ import annotations

from dataclasses import dataclass

from foreshard.api.migration import Item
from foreshard_broker.routing import RoutingTable


@dataclass(frozen=True)
class CopyAhead:
    migration_id: str
    item: Item
    source: int
    target: int
    from_offset: int
    max_bytes: int  # the copy's share of the bytes/s throttle for one pass (0: unlimited)


@dataclass(frozen=True)
class Fence:
    migration_id: str
    item: Item
    source: int
    target: int
    lease_id: str
    ttl_s: float
    from_offset: int
    settle_s: float


@dataclass(frozen=True)
class Switch:
    """The recorder writes `table` to status.routing together with the Switch phase, then acts."""

    migration_id: str
    item: Item
    source: int
    target: int
    table: RoutingTable
    from_offset: int


@dataclass(frozen=True)
class PushRouting:
    migration_id: str
    table: RoutingTable
    shards: tuple[int, ...]


@dataclass(frozen=True)
class Release:
    migration_id: str
    item: Item
    source: int


@dataclass(frozen=True)
class RollBack:
    migration_id: str
    item: Item
    source: int
    target: int
    lease_id: str


Action = CopyAhead | Fence | Switch | PushRouting | Release | RollBack
