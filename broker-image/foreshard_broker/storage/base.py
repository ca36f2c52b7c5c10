"""Storage records and the Protocol every storage implementation satisfies.

The broker's state is a log of records: published batches, group acks, group creation and
releases. Replaying the log from the start rebuilds the broker exactly; so a storage only has to
append records durably, in call order, and hand them back in the same order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

NO_HEADERS: Mapping[str, str] = {}


class Message:
    """One stored message. Plain `__slots__` class: millions are created on the hot path."""

    __slots__ = (
        "headers",
        "key",
        "offset",
        "origin_offset",
        "origin_shard",
        "payload",
        "publish_time_ms",
        "slot",
    )

    def __init__(
        self,
        offset: int,
        key: str,
        slot: int,
        payload: bytes,
        headers: Mapping[str, str] = NO_HEADERS,
        publish_time_ms: int = 0,
        origin_shard: int = -1,
        origin_offset: int = 0,
    ) -> None:
        self.offset = offset
        self.key = key
        self.slot = slot
        self.payload = payload
        self.headers = headers
        self.publish_time_ms = publish_time_ms
        # Where an imported message came from (shard, offset); -1 for a locally published one.
        self.origin_shard = origin_shard
        self.origin_offset = origin_offset

    def fields(self) -> tuple[object, ...]:
        return (
            self.offset,
            self.key,
            self.slot,
            self.payload,
            dict(self.headers),
            self.publish_time_ms,
            self.origin_shard,
            self.origin_offset,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and self.fields() == other.fields()

    def __hash__(self) -> int:
        return hash(self.offset)

    def __repr__(self) -> str:
        return f"Message(offset={self.offset}, key={self.key!r}, slot={self.slot}, {len(self.payload)}B)"


@dataclass(frozen=True)
class BatchRecord:
    """Messages published (or imported) together; `producer_id` is empty for imports."""

    producer_id: str
    sequence: int
    messages: list[Message]
    # Indices (in the request) of the messages this batch refused (MOVED / PAUSED): a duplicate of
    # the producer's last batch is answered with the same refusals. A batch without messages only
    # records a producer sequence (carried over by ImportGroupState).
    refused: tuple[int, ...] = ()


@dataclass(frozen=True)
class AckRecord:
    group: str
    offsets: list[int]


@dataclass(frozen=True)
class GroupRecord:
    """A consumer group was created; it consumes offsets >= `from_offset`."""

    group: str
    from_offset: int


@dataclass(frozen=True)
class ReleaseRecord:
    """Messages deleted from this shard after their slot moved away."""

    offsets: list[int]


@dataclass(frozen=True)
class CheckpointRecord:
    """State that must outlive deleted segments; first record of every segment after the first.

    Replaying from any checkpoint onwards rebuilds the broker once every message in the segments
    before it has been acknowledged by every group (see SegmentLogStorage.compact).
    """

    next_offset: int
    groups: dict[str, int]  # group -> from_offset
    producers: dict[str, int]  # producer id -> last stored sequence
    imported: dict[tuple[int, int], int]  # (source shard, source offset) -> local offset, retained only
    refused: dict[str, tuple[int, ...]] = field(default_factory=dict)  # producer id -> last batch's refusals


Record = BatchRecord | AckRecord | GroupRecord | ReleaseRecord | CheckpointRecord


class StorageError(RuntimeError):
    """The log cannot be read or written; the broker must stop rather than lose data."""


class Storage(Protocol):
    """Durable, ordered record log.

    `append` enqueues synchronously, so the log order is the call order, and returns a future that
    completes once the record is durable (per the implementation's sync mode). `replay` is called
    once, before the first append.
    """

    # Supplies the state written at the start of each new segment (set by the broker).
    checkpoint: Callable[[], CheckpointRecord] | None

    def replay(self) -> Iterator[Record]: ...

    def append(self, record: Record) -> asyncio.Future[None]: ...

    async def barrier(self) -> None:
        """Return once every record appended so far is durable."""
        ...

    async def close(self) -> None: ...

    def compact(self, lowest_retained_offset: int) -> int:
        """Drop storage no longer needed once offsets below `lowest_retained_offset` are all acked.

        Returns the number of bytes freed (0 for implementations that never compact).
        """
        ...
