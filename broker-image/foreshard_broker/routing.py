"""Key -> slot hash and the routing table: pure, shared by broker, client SDK and operator.

The hash is part of the wire contract and never changes for a queue:

    slot(key) = crc32(key.encode("utf-8")) mod num_slots        (zlib / IEEE 802.3 CRC-32, unsigned)

Keyless messages (empty key) have no slot; they may go to any shard.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_SLOTS = 1024
KEYLESS_SLOT = 0xFFFFFFFF  # slot number reported for keyless messages (outside every range)


def slot_of(key: str, num_slots: int = DEFAULT_SLOTS) -> int:
    """The slot of an order key; see the module docstring for the stable definition."""
    return zlib.crc32(key.encode("utf-8")) % num_slots


class RoutingError(ValueError):
    """A routing table that cannot be served (wrong slot count, unknown shard, ...)."""


@dataclass(frozen=True)
class RoutingTable:
    """`{epoch, slot -> shard, pinned key -> shard, shard -> endpoint}`; epoch 0 means "unset"."""

    epoch: int
    num_slots: int
    slot_owners: tuple[int, ...]
    pinned: Mapping[str, int] = field(default_factory=dict)
    endpoints: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def single_shard(cls, shard: int, num_slots: int = DEFAULT_SLOTS, endpoint: str = "") -> RoutingTable:
        """Epoch 0: one shard owns everything (a standalone broker before the operator speaks)."""
        return cls(0, num_slots, (shard,) * num_slots, {}, {shard: endpoint} if endpoint else {})

    def owner(self, key: str, slot: int) -> int:
        """Owner shard of a keyed message whose slot is already computed."""
        if self.pinned:
            pinned = self.pinned.get(key)
            if pinned is not None:
                return pinned
        return self.slot_owners[slot]

    def owner_of_key(self, key: str) -> int:
        return self.owner(key, slot_of(key, self.num_slots))

    def endpoint(self, shard: int) -> str:
        return self.endpoints.get(shard, "")

    def slots_of(self, shard: int) -> list[int]:
        return [slot for slot, owner in enumerate(self.slot_owners) if owner == shard]


def validate(table: RoutingTable, expected_slots: int, max_pinned: int = 100_000) -> None:
    """Raise RoutingError with a sentence a person can act on when the table is unusable."""
    if table.epoch <= 0:
        raise RoutingError(f"routing epoch must be a positive integer, got {table.epoch}")
    if table.num_slots != expected_slots:
        raise RoutingError(f"routing table has num_slots={table.num_slots}; this queue uses {expected_slots}")
    if len(table.slot_owners) != table.num_slots:
        raise RoutingError(
            f"routing table lists {len(table.slot_owners)} slot owners; expected exactly {table.num_slots}"
        )
    if len(table.pinned) > max_pinned:
        raise RoutingError(f"routing table pins {len(table.pinned)} keys; the limit is {max_pinned}")
    _validate_shards(table.slot_owners, table.pinned, table.endpoints)


def _validate_shards(owners: Sequence[int], pinned: Mapping[str, int], endpoints: Mapping[int, str]) -> None:
    negative = sorted({shard for shard in (*owners, *pinned.values()) if shard < 0})
    if negative:
        raise RoutingError(f"shard ordinals must be >= 0, got {negative[:5]}")
    if any(key == "" for key in pinned):
        raise RoutingError("a pinned key must not be empty")
    if endpoints:
        missing = sorted({*owners, *pinned.values()} - set(endpoints))
        if missing:
            raise RoutingError(f"routing table has no endpoint for shard(s) {missing[:5]}")
