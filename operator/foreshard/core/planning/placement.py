"""Placement of slots and pinned keys on shards: sticky, balanced, capacity-respecting.

    items (slots + pins) --keep owner if it survives--> kept
        --shard above its limit: evict its largest items until under--> orphans
        --orphans, heaviest first, to the least-loaded shard--> placement

The limit of a shard is min(capacity, mean load * (1 + slack)): the capacity bound protects the
SLO, the balance bound lets new shards take work. Evicting largest-first moves the fewest items
out of an overloaded shard; an item only moves when its shard is gone, unknown or over the limit
(the stickiness rule). Least-loaded assignment never exceeds capacity when
`total / shards + largest item <= capacity`, since the least-loaded shard is below the mean.

A key hotter than the planning fraction of one shard is pinned (placed as its own item); a key
hotter than a whole shard is reported, because strict order forbids splitting it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from foreshard.core.series import FloatArray

IntArray = npt.NDArray[np.int64]
UNOWNED = -1


@dataclass(frozen=True)
class Move:
    item: str  # "slot/17" or "key/<name>"
    source: int  # UNOWNED when the item had no surviving owner
    target: int
    load: float


@dataclass(frozen=True)
class Placement:
    slot_owner: IntArray
    pin_owner: dict[str, int]  # sorted by key
    shard_load: FloatArray
    moves: tuple[Move, ...]  # sorted by (target, item)
    unsplittable: tuple[str, ...]  # keys whose own load exceeds one shard
    within_capacity: bool


@dataclass(frozen=True)
class Hotness:
    slot_load: FloatArray  # load per slot without the pinned keys
    pins: dict[str, float]


def split_hot_keys(
    keys: Sequence[str],
    key_slot: IntArray,
    key_load: FloatArray,
    slots: int,
    threshold: float,
    event_keys: Sequence[str] = (),
) -> Hotness:
    """Pin keys above `threshold` messages/s (and event keys); the rest add up per slot."""
    hot = key_load > threshold
    if event_keys:
        hot |= np.isin(np.asarray(keys, dtype=object), np.asarray(list(event_keys), dtype=object))
    cold = ~hot
    slot_load = np.bincount(key_slot[cold], weights=key_load[cold], minlength=slots).astype(np.float64)
    pins = {keys[i]: float(key_load[i]) for i in sorted(np.flatnonzero(hot).tolist(), key=lambda i: keys[i])}
    return Hotness(slot_load, pins)


def _evict(owner: IntArray, load: FloatArray, shards: int, limit: float) -> IntArray:
    """Unown the largest items of every shard above `limit`, until it is at or under it."""
    owner = owner.copy()
    alive = owner >= 0
    shard_load = np.bincount(owner[alive], weights=load[alive], minlength=shards)
    for shard in np.flatnonzero(shard_load > limit).tolist():
        members = np.flatnonzero(owner == shard)
        order = members[np.lexsort((members, -load[members]))]  # largest first, then by index
        excess = shard_load[shard] - limit
        freed = np.cumsum(load[order])
        count = int(np.searchsorted(freed, excess - 1e-12)) + 1
        owner[order[:count]] = UNOWNED
    return owner


def _assign(owner: IntArray, load: FloatArray, shards: int) -> IntArray:
    """Orphans, heaviest first, each to the least-loaded shard (lowest ordinal on ties)."""
    owner = owner.copy()
    alive = owner >= 0
    shard_load = np.bincount(owner[alive], weights=load[alive], minlength=shards)
    heap = [(float(shard_load[s]), s) for s in range(shards)]
    heapq.heapify(heap)
    orphans = np.flatnonzero(~alive)
    for item in orphans[np.lexsort((orphans, -load[orphans]))].tolist():
        current, shard = heapq.heappop(heap)
        owner[item] = shard
        heapq.heappush(heap, (current + float(load[item]), shard))
    return owner


def place(
    slot_load: FloatArray,
    pins: Mapping[str, float],
    current_slots: IntArray,
    current_pins: Mapping[str, int],
    shards: int,
    capacity: float,
    slack: float = 0.1,
) -> Placement:
    """Where every slot and pinned key lives on `shards` shards, moving as little as the rules allow."""
    if shards < 1:
        raise ValueError(f"a placement needs at least one shard, got {shards}")
    pin_names = sorted(pins)
    load = np.concatenate(
        (slot_load.astype(np.float64), np.array([pins[k] for k in pin_names], dtype=np.float64))
    )
    before = np.concatenate(
        (
            current_slots.astype(np.int64),
            np.array([current_pins.get(k, UNOWNED) for k in pin_names], dtype=np.int64),
        )
    )
    owner = np.where((before >= 0) & (before < shards), before, UNOWNED)
    limit = min(capacity, float(load.sum()) / shards * (1.0 + slack))
    owner = _assign(_evict(owner, load, shards, limit), load, shards)
    return _result(owner, before, load, len(slot_load), pin_names, shards, capacity)


def _result(
    owner: IntArray,
    before: IntArray,
    load: FloatArray,
    slots: int,
    pin_names: list[str],
    shards: int,
    capacity: float,
) -> Placement:
    names = [f"slot/{i}" for i in range(slots)] + [f"key/{k}" for k in pin_names]
    changed = np.flatnonzero(owner != before).tolist()
    moves = sorted(
        (Move(names[i], int(before[i]), int(owner[i]), float(load[i])) for i in changed),
        key=lambda m: (m.target, m.item),
    )
    shard_load = np.bincount(owner, weights=load, minlength=shards).astype(np.float64)
    pin_load = load[slots:]
    return Placement(
        slot_owner=owner[:slots],
        pin_owner={k: int(owner[slots + j]) for j, k in enumerate(pin_names)},
        shard_load=shard_load,
        moves=tuple(moves),
        unsplittable=tuple(k for j, k in enumerate(pin_names) if pin_load[j] > capacity),
        within_capacity=bool((shard_load <= capacity * (1 + 1e-9)).all()),
    )
