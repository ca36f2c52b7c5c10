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

from foreshard_broker.idempotence import ProducerHistory

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


class Chunk:
    """Messages stored together, in columns; their offsets are `first` .. `first + len - 1`.

    The broker holds retained messages as chunks rather than one object per message: storing a
    batch is a few C-level list operations instead of a Python loop, and the cyclic garbage collector
    has nothing per message to scan (str, bytes and int are not GC-tracked), so a large backlog
    does not turn into collection pauses. `Message` views are made on demand (deliveries, exports).
    """

    __slots__ = ("first", "headers", "keys", "origin_offsets", "origin_shards", "payloads", "slots", "times")

    def __init__(
        self,
        first: int,
        keys: list[str],
        slots: list[int],
        payloads: list[bytes],
        times: list[int],
        headers: list[Mapping[str, str]] | None = None,
        origin_shards: list[int] | None = None,
        origin_offsets: list[int] | None = None,
    ) -> None:
        self.first = first
        self.keys = keys
        self.slots = slots
        self.payloads = payloads
        self.times = times
        self.headers = headers  # None: no message has headers
        # Where imported messages came from (shard, offset); None for locally published ones.
        self.origin_shards = origin_shards
        self.origin_offsets = origin_offsets

    @classmethod
    def of(cls, messages: list[Message]) -> Chunk:
        """Columns of `messages`, whose offsets must be consecutive."""
        first = messages[0].offset if messages else 0
        if any(m.offset != first + i for i, m in enumerate(messages)):
            raise StorageError("chunk offsets must be consecutive")
        headers = [m.headers for m in messages]
        imported = any(m.origin_shard >= 0 for m in messages)
        return cls(
            first,
            [m.key for m in messages],
            [m.slot for m in messages],
            [m.payload for m in messages],
            [m.publish_time_ms for m in messages],
            headers if any(headers) else None,
            [m.origin_shard for m in messages] if imported else None,
            [m.origin_offset for m in messages] if imported else None,
        )

    def __len__(self) -> int:
        return len(self.keys)

    def message(self, index: int) -> Message:
        return Message(
            self.first + index,
            self.keys[index],
            self.slots[index],
            self.payloads[index],
            NO_HEADERS if self.headers is None else self.headers[index],
            self.times[index],
            -1 if self.origin_shards is None else self.origin_shards[index],
            0 if self.origin_offsets is None else self.origin_offsets[index],
        )

    def messages(self) -> list[Message]:
        return [self.message(index) for index in range(len(self.keys))]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chunk) and self.messages() == other.messages()

    def __hash__(self) -> int:
        return hash((self.first, len(self.keys)))

    def __repr__(self) -> str:
        return f"Chunk(first={self.first}, count={len(self.keys)})"


EMPTY_CHUNK = Chunk(0, [], [], [], [])


@dataclass(frozen=True)
class BatchRecord:
    """Messages published (or imported) together; `producer_id` is empty for imports."""

    producer_id: str
    sequence: int
    chunk: Chunk
    # Indices (in the request) of the messages this batch refused (MOVED / PAUSED): a duplicate of
    # the producer's last batch is answered with the same refusals. A batch without messages only
    # records a producer sequence (carried over by ImportGroupState).
    refused: tuple[int, ...] = ()
    # The producer's epoch, and the request's message count and payload bytes (refused ones
    # included): a resend is a duplicate only if it matches (see foreshard_broker.idempotence).
    # -1: not recorded (logs of older versions; such a batch matches any resend of its sequence).
    epoch: int = 0
    size: int = -1
    payload_bytes: int = -1

    @classmethod
    def of(
        cls, producer_id: str, sequence: int, messages: list[Message], refused: tuple[int, ...] = ()
    ) -> BatchRecord:
        return cls(producer_id, sequence, Chunk.of(messages), refused)


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
class GroupDeletedRecord:
    """A consumer group was deleted: it holds nothing from here on."""

    group: str


@dataclass(frozen=True)
class ExpireRecord:
    """Retention: every message below `before_offset` still retained is dropped, for every group."""

    before_offset: int


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
    # producer id -> epoch and recent batches (supersedes `producers` / `refused`, kept for readers
    # of older versions; a checkpoint without it is read as epoch 0 and one batch of unknown size)
    windows: dict[str, ProducerHistory] = field(default_factory=dict)


Record = (
    BatchRecord
    | AckRecord
    | GroupRecord
    | ReleaseRecord
    | CheckpointRecord
    | GroupDeletedRecord
    | ExpireRecord
)


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
    # Called once, with a reason, when a write or fsync fails (set by the broker: it stops writing).
    on_failure: Callable[[str], None]

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
