"""What admin operations select and answer: a selection of slots and pinned keys, group state,
producer sequences, a fence's answer and a switch's answer (plain values, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from foreshard_broker.idempotence import ProducerHistory
from foreshard_broker.routing import slot_of
from foreshard_broker.server.fences import Lease
from foreshard_broker.storage import Message


@dataclass(frozen=True)
class Selector:
    slots: frozenset[int] = frozenset()
    keys: frozenset[str] = frozenset()
    pinned: Mapping[str, int] = field(default_factory=dict)

    def slots_to_scan(self, num_slots: int) -> set[int]:
        """Every slot a matching message can live in: the selected slots and the pinned keys' slots."""
        return {*self.slots, *(slot_of(key, num_slots) for key in self.keys)}

    def matches(self, message: Message) -> bool:
        key = message.key
        if not key:
            return False
        if key in self.keys:
            return True
        return message.slot in self.slots and key not in self.pinned


@dataclass(frozen=True)
class GroupPending:
    group: str
    pending_offsets: list[int]


@dataclass(frozen=True)
class ProducerSeen:
    """A producer id's epoch and recent stored batches, as another shard merges them."""

    producer_id: str
    history: ProducerHistory


@dataclass(frozen=True)
class Fenced:
    """What a Fence call answers: the lease, and everything the target needs, in one reply."""

    lease: Lease
    renewed: bool
    inflight: int
    high_offset: int
    delta: list[Message]
    groups: list[GroupPending]
    producers: list[ProducerSeen]
    settled_ms: int


@dataclass(frozen=True)
class Switched:
    epoch: int
    unfenced_slots: list[int] = field(default_factory=list)
    unfenced_keys: list[str] = field(default_factory=list)
