"""When the pass plans moves, and which: the recorded table + loads -> a placement to carry out (pure).

    recorded table, the shard count the pass aims at, loads per slot (or uniform)
        -> trigger: a shard that will stay owns nothing (scale-out), or a shard that will go owns
           something (scale-in), or a rebalance already in progress (Migrating=True, Moving)
        -> placement.place (sticky, capacity-respecting) on the aimed shard count
        -> minus moves that would carry an item straight on (moved within SETTLE_S, its owner stays),
           except onto a shard that owns nothing yet

Hysteresis: a balanced-enough table never starts a plan (only the structural triggers do), and a
plan in progress ends as soon as the placement, with its slack, has no move left. A move wave is
planned only when no move is in flight, so every wave starts from the table the previous wave left;
migration ids hash the plan (the epoch it starts from), so the same wave admitted twice is a no-op.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from foreshard.api.migration import Migration, Phase
from foreshard.core.planning.placement import Placement, place
from foreshard.core.series import FloatArray
from foreshard_broker.routing import RoutingTable

SETTLE_S = 600.0  # an item moved this recently is not moved again unless its shard goes away
UNIFORM_FLOOR = 0.01  # of the mean slot load: an idle slot still weighs something when placing


@dataclass(frozen=True)
class Loads:
    """What the brokers reported (GetLoadMetrics): messages/s and retained bytes per slot, per key."""

    slot_rate: Mapping[int, float] = field(default_factory=dict)
    slot_bytes: Mapping[int, float] = field(default_factory=dict)
    key_rate: Mapping[str, float] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        return sum(self.slot_rate.values()) > 0


def trigger(table: RoutingTable, shards: int) -> str | None:
    """Why the table must change for `shards` shards (None: it may stay as it is)."""
    owners = {*table.slot_owners, *table.pinned.values()}
    empty = [s for s in range(shards) if s not in owners]
    going = sorted(s for s in owners if s >= shards)
    if going:
        return f"shards {', '.join(map(str, going))} are to be removed and still own slots"
    if empty:
        return f"shards {', '.join(map(str, empty))} own nothing yet"
    return None


def slot_weights(loads: Loads, num_slots: int) -> FloatArray:
    """Messages/s per slot; every slot the same weight when the brokers reported no load."""
    rates = np.array([loads.slot_rate.get(s, 0.0) for s in range(num_slots)], dtype=np.float64)
    if rates.sum() <= 0:
        return np.ones(num_slots, dtype=np.float64)
    weighted: FloatArray = rates + rates.mean() * UNIFORM_FLOOR
    return weighted


def propose(
    table: RoutingTable,
    shards: int,
    loads: Loads,
    capacity: float | None,
    recent: Sequence[Migration],
    now_s: float,
) -> Placement:
    """The placement for `shards` shards, without moves that would undo a recent one."""
    weights = slot_weights(loads, table.num_slots)
    pins = {key: loads.key_rate.get(key, float(weights.mean())) for key in table.pinned}
    if not loads.known:
        capacity = None  # unknown load: nothing to hold against a capacity
    placement = place(
        weights,
        pins,
        np.asarray(table.slot_owners, dtype=np.int64),
        dict(table.pinned),
        shards,
        capacity if capacity is not None else float("inf"),
    )
    settled = {
        str(m.item)
        for m in recent
        if m.phase is Phase.DONE and now_s - m.phase_since_s < SETTLE_S and m.target < shards
    }
    # A recent item still moves when its shard goes, or onto a shard that owns nothing yet: the
    # sticky placement may fill an empty shard only from shards that just received items, and
    # holding those back would leave that shard empty (the scale-out undone) for SETTLE_S.
    owners = {*table.slot_owners, *table.pinned.values()}
    kept = tuple(
        m for m in placement.moves if m.item not in settled or m.source >= shards or m.target not in owners
    )
    return replace(placement, moves=kept)


def backlog_bytes(loads: Loads, placement: Placement) -> dict[str, float]:
    """What each move's copy carries (slots only: a pinned key's bytes are not reported apart)."""
    out: dict[str, float] = {}
    for move in placement.moves:
        kind, _, name = move.item.partition("/")
        if kind == "slot":
            out[move.item] = float(loads.slot_bytes.get(int(name), 0.0))
    return out


def plan_id(table: RoutingTable, shards: int) -> str:
    """Names one wave: the table it starts from and the shard count it aims at."""
    owners = ",".join(map(str, table.slot_owners))
    pins = ",".join(f"{k}={v}" for k, v in sorted(table.pinned.items()))
    digest = hashlib.sha256(f"{table.epoch}|{shards}|{owners}|{pins}".encode()).hexdigest()
    return digest[:16]
