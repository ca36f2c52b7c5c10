"""The transport seam between the SDK (producer, consumer, mover) and a broker.

The producer and consumer speak only to :class:`Transport`.  Two implementations exist: the gRPC one
(``grpc_transport.py``, adapting the low-level broker client) and the in-memory twin (``twin.py``)
with the same ordering, ``MOVED`` and ``PAUSED`` semantics, for fast tests and the prefetch benchmark.

Ownership answers are exceptions (:class:`Moved`, :class:`Paused`) for calls that address one place
(fetch, ack, admin); publish answers per message, because one batch may span slots with different
fates and the producer must retry exactly the refused ones, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class TransportError(Exception):
    """The broker could not be reached or failed; the call may or may not have taken effect."""


class Moved(Exception):
    """The broker does not own the slot; ``owner`` (a shard id, may be empty) does at ``epoch``."""

    def __init__(self, owner: str, epoch: int) -> None:
        super().__init__(f"moved to shard {owner!r} at epoch {epoch}")
        self.owner = owner
        self.epoch = epoch


class Paused(Exception):
    """The slot is paused for a migration; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"paused, retry after {retry_after_s:.3f}s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RoutingTable:
    """``{epoch, slot -> shard, pinned key -> shard, shard -> endpoint}``; a higher epoch wins."""

    epoch: int
    slots: tuple[str, ...]
    pins: Mapping[str, str] = field(default_factory=dict)
    endpoints: Mapping[str, str] = field(default_factory=dict)

    @property
    def slot_count(self) -> int:
        return len(self.slots)

    def shard_for(self, key: str, slot: int) -> str:
        """Owner of ``key`` whose slot is ``slot``: a pin overrides the slot's owner."""
        return self.pins.get(key) or self.slots[slot]

    def shards(self) -> list[str]:
        return sorted(set(self.slots) | set(self.pins.values()) | set(self.endpoints))


@dataclass(frozen=True)
class OutboundMessage:
    """A message to publish; ``key`` None means unordered."""

    key: str | None
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    # Producer sequence, unique per producer id; lets the broker drop a retried duplicate.
    sequence: int = 0

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.key or "")


class PublishStatus(Enum):
    OK = "ok"
    MOVED = "moved"
    PAUSED = "paused"
    REJECTED = "rejected"


@dataclass(frozen=True)
class PublishOutcome:
    """The fate of one message of a batch, in the batch's order."""

    status: PublishStatus
    owner: str = ""
    epoch: int = 0
    retry_after_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Delivery:
    """A fetched message.  ``offset`` is the broker's position of the message (per slot, and kept
    across a slot move), so a consumer can recognise a redelivery of something it already acked."""

    key: str | None
    payload: bytes
    slot: int
    offset: int
    receipt: str
    headers: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1
    publish_time: float = 0.0

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.key or "")


@dataclass(frozen=True)
class FetchRequest:
    group: str
    consumer: str
    max_messages: int
    max_bytes: int
    wait_s: float


class Transport(Protocol):
    """Everything the SDK needs from brokers, addressed by endpoint."""

    def slot_of(self, key: str, slot_count: int) -> int:
        """The broker's stable slot hash."""
        ...

    async def routing(self, endpoint: str) -> RoutingTable: ...

    async def publish(
        self, endpoint: str, producer_id: str, messages: Sequence[OutboundMessage]
    ) -> list[PublishOutcome]: ...

    async def fetch(self, endpoint: str, request: FetchRequest) -> list[Delivery]: ...

    async def ack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None: ...

    async def nack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None: ...

    async def backlog(self, endpoint: str) -> int:
        """Messages waiting on that shard (for placing keyless messages)."""
        ...

    async def close(self) -> None: ...


class AdminTransport(Transport, Protocol):
    """The admin calls a slot move needs (see ``mover.py``)."""

    async def pause(self, endpoint: str, slot: int) -> None: ...

    async def resume(self, endpoint: str, slot: int) -> None: ...

    async def inflight(self, endpoint: str, slot: int) -> int:
        """Deliveries of the slot not yet acknowledged, over all groups."""
        ...

    async def copy_backlog(self, source: str, target: str, slot: int, from_offset: int) -> int:
        """Copy the slot's messages from ``from_offset`` on; returns the next offset to copy."""
        ...

    async def copy_group_state(self, source: str, target: str, slot: int) -> None: ...

    async def update_routing(self, endpoint: str, table: RoutingTable) -> None: ...

    async def release(self, endpoint: str, slot: int) -> None:
        """Drop the slot's data from a shard that no longer owns it."""
        ...
