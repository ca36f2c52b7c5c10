"""The broker's in-memory state and the records that change it: state in, record, state out.

The same `apply_*` functions run when a record is created live and when the log is replayed at
start-up, so a restarted broker holds exactly the state it acknowledged before the crash.
A message is retained until every consumer group has acknowledged it (while no group exists,
messages are retained for a group created later from the earliest position).

Retained messages live in their batch's `Chunk` (columns), wrapped in a `Block` that counts, per
message, the groups still holding it. Storing a batch is a handful of C-level operations plus one
short loop for per-key byte counters; nothing per message is a GC-tracked object.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import compress

from foreshard_broker.idempotence import UNKNOWN, ProducerHistory, SentBatch, merge, remember, snapshot
from foreshard_broker.server.groups import ConsumerGroup
from foreshard_broker.storage import (
    AckRecord,
    BatchRecord,
    CheckpointRecord,
    Chunk,
    ExpireRecord,
    GroupDeletedRecord,
    GroupRecord,
    Message,
    Record,
    ReleaseRecord,
)

DROPPED = -1  # holder count of a message that is no longer retained


class Block:
    """A retained chunk: `holders[i]` is how many groups still hold message i, or DROPPED."""

    __slots__ = ("chunk", "holders", "live")

    def __init__(self, chunk: Chunk, holders: array[int]) -> None:
        self.chunk = chunk
        self.holders = holders
        self.live = len(chunk)

    def live_indices(self, start: int = 0) -> Iterator[int]:
        holders = self.holders
        return (i for i in range(start, len(holders)) if holders[i] != DROPPED)


class BrokerState:
    def __init__(self) -> None:
        self.blocks: dict[int, Block] = {}  # first offset -> block; insertion order is offset order
        self.starts: list[int] = []  # the blocks' first offsets, ascending (bisect finds an offset)
        self.retained_count = 0
        self.groups: dict[str, ConsumerGroup] = {}
        # producer id -> its epoch and last stored batches (idempotence.WINDOW of them at most):
        # what a resend is judged against and answered with (the original's refusals included).
        self.producers: dict[str, ProducerHistory] = {}
        self.imported: dict[tuple[int, int], int] = {}  # (source shard, source offset) -> local offset
        self.next_offset = 0
        self.retained_bytes = 0
        # Per key, ever: messages (and bytes) stored, and dropped (acked by all, or released). Only
        # ever incremented, so a batch costs one C-level Counter update and one loop; a key's
        # backlog is the difference, and arrivals are what was stored since start-up (LoadTracker).
        self.stored: Counter[str] = Counter()
        self.stored_bytes: dict[str, int] = {}
        self.dropped: Counter[str] = Counter()
        self.dropped_bytes: dict[str, int] = {}
        # Retention: messages dropped past the age/bytes limits, per group that still held them
        # ("" counts those no group held, kept for a group created later).
        self.expired: Counter[str] = Counter()
        # Called with the key of every message a group acknowledged (load metrics hook).
        self.on_ack: Callable[[str], None] = lambda key: None
        # Called with the keys and payload sizes of every imported batch (a migration's copy): those
        # were stored here, yet they are not arrivals (the load metrics hook discounts them).
        self.on_import: Callable[[list[str], list[int]], None] = lambda keys, sizes: None

    def apply(self, record: Record) -> None:
        if isinstance(record, BatchRecord):
            self.apply_batch(record)
        elif isinstance(record, AckRecord):
            self.apply_acks(record.group, record.offsets)
        elif isinstance(record, GroupRecord):
            self.apply_group(record.group, record.from_offset)
        elif isinstance(record, ReleaseRecord):
            self.apply_release(record.offsets)
        elif isinstance(record, GroupDeletedRecord):
            self.apply_group_deleted(record.group)
        elif isinstance(record, ExpireRecord):
            self.apply_expire(record.before_offset)
        else:
            self.apply_checkpoint(record)

    def apply_checkpoint(self, record: CheckpointRecord) -> None:
        """Merge (never lower) the state a checkpoint carries: replay may start at one."""
        self.next_offset = max(self.next_offset, record.next_offset)
        for name, from_offset in record.groups.items():
            self.apply_group(name, from_offset)
        for producer, sequence in record.producers.items():
            if producer not in record.windows:  # a checkpoint of an older version
                legacy = SentBatch(sequence, 0, UNKNOWN, UNKNOWN, record.refused.get(producer, ()))
                self.apply_producer(producer, 0, legacy)
        for producer, history in record.windows.items():
            merged = merge(self.producers.get(producer), history)
            if merged is not None:
                self.producers[producer] = merged
        self.imported.update(record.imported)

    def checkpoint(self) -> CheckpointRecord:
        return CheckpointRecord(
            self.next_offset,
            {name: group.from_offset for name, group in self.groups.items()},
            {producer: history.last for producer, history in self.producers.items()},
            {origin: local for origin, local in self.imported.items() if self.is_retained(local)},
            {
                p: h.batches[-1].refused
                for p, h in self.producers.items()
                if h.batches and h.batches[-1].refused
            },
            {producer: snapshot(history) for producer, history in self.producers.items()},
        )

    def apply_producer(self, producer: str, epoch: int, batch: SentBatch) -> None:
        """Remember a producer's stored batch (an older epoch's is ignored: it never moves back)."""
        self.producers[producer] = remember(self.producers.get(producer), epoch, batch)

    # ------------------------------------------------------------------ lookups
    def _locate(self, offset: int) -> tuple[Block, int] | None:
        """The block holding `offset` and its index there, if the message is retained."""
        at = bisect.bisect_right(self.starts, offset) - 1
        if at < 0:
            return None
        block = self.blocks[self.starts[at]]
        index = offset - block.chunk.first
        if index >= len(block.holders) or block.holders[index] == DROPPED:
            return None
        return block, index

    def backlog(self, key: str) -> tuple[int, int]:
        """Retained messages and payload bytes of `key`."""
        return (
            self.stored[key] - self.dropped[key],
            self.stored_bytes.get(key, 0) - self.dropped_bytes.get(key, 0),
        )

    def is_retained(self, offset: int) -> bool:
        return self._locate(offset) is not None

    def message(self, offset: int) -> Message:
        """The retained message at `offset` (groups only hold offsets of retained messages)."""
        found = self._locate(offset)
        if found is None:
            raise KeyError(f"offset {offset} is not retained")
        block, index = found
        return block.chunk.message(index)

    def get(self, offset: int) -> Message | None:
        found = self._locate(offset)
        return None if found is None else found[0].chunk.message(found[1])

    def retained_messages(self, from_offset: int = 0) -> Iterator[Message]:
        """Every retained message at or after `from_offset`, in offset order."""
        for block in self._blocks_from(from_offset):
            start = max(0, from_offset - block.chunk.first)
            for index in block.live_indices(start):
                yield block.chunk.message(index)

    def _blocks_from(self, from_offset: int) -> list[Block]:
        at = max(0, bisect.bisect_right(self.starts, from_offset) - 1)
        return [self.blocks[first] for first in self.starts[at:]]

    def lowest_retained(self) -> int:
        for block in self.blocks.values():
            for index in block.live_indices():
                return block.chunk.first + index
        return self.next_offset

    # ------------------------------------------------------------------ records
    def apply_batch(self, record: BatchRecord) -> None:
        chunk = record.chunk
        count = len(chunk)
        if record.producer_id:
            size = record.size if record.size >= 0 else count + len(record.refused)
            sent = SentBatch(record.sequence, chunk.first, size, record.payload_bytes, record.refused)
            self.apply_producer(record.producer_id, record.epoch, sent)
        if not count:
            return
        first, last, keys = chunk.first, chunk.first + count - 1, chunk.keys
        groups = [group for group in self.groups.values() if last >= group.from_offset]
        if all(group.from_offset <= first for group in groups):
            holders = array("i", [len(groups)]) * count
        else:  # a group created inside this batch's offset range (replay of old logs only)
            holders = array("i", (sum(first + i >= g.from_offset for g in groups) for i in range(count)))
        self.blocks[first] = Block(chunk, holders)
        if self.starts and first <= self.starts[-1]:
            raise AssertionError(f"batch at offset {first} is not after the last one ({self.starts[-1]})")
        self.starts.append(first)
        self.retained_count += count
        self.stored.update(keys)  # Counter.update counts in C
        stored_bytes = self.stored_bytes
        for key, size in zip(keys, map(len, chunk.payloads), strict=True):  # the one per-message loop
            stored_bytes[key] = stored_bytes.get(key, 0) + size
        if chunk.origin_shards is not None and chunk.origin_offsets is not None:
            origins = zip(chunk.origin_shards, chunk.origin_offsets, strict=True)
            self.imported.update(zip(origins, range(first, last + 1), strict=True))
            self.on_import(keys, list(map(len, chunk.payloads)))
        for group in groups:
            skip = max(0, group.from_offset - first)
            group.add_run(first + skip, keys[skip:] if skip else keys)
        self.next_offset = max(self.next_offset, last + 1)

    def account(self, messages: Iterable[Message]) -> None:
        """Count accepted (not yet visible) bytes against the memory limit before they are stored."""
        self.retained_bytes += sum(len(message.payload) for message in messages)

    def apply_group(self, name: str, from_offset: int) -> ConsumerGroup:
        group = self.groups.get(name)
        if group is not None:
            return group
        group = ConsumerGroup(name, from_offset, self.message)
        self.groups[name] = group
        for block in self._blocks_from(from_offset):
            chunk, holders = block.chunk, block.holders
            for index in block.live_indices(max(0, from_offset - chunk.first)):
                group.add(chunk.first + index, chunk.keys[index])
                holders[index] += 1
        return group

    def apply_acks(self, group_name: str, offsets: Iterable[int]) -> None:
        """Replay of acknowledgements (live acks go through `ConsumerGroup.ack` + `acked`)."""
        group = self.groups.get(group_name)
        if group is None:
            return
        for offset in offsets:
            found = self._locate(offset)
            if found is not None and group.discard(offset, found[0].chunk.keys[found[1]]):
                self._acked(*found)

    def acked(self, message: Message) -> None:
        """One group finished with `message`; drop it once no group holds it."""
        found = self._locate(message.offset)
        if found is not None:
            self._acked(*found)

    def _acked(self, block: Block, index: int) -> None:
        self.on_ack(block.chunk.keys[index])
        block.holders[index] -= 1
        if block.holders[index] <= 0:
            self._drop(block, index)

    def _drop(self, block: Block, index: int) -> None:
        chunk = block.chunk
        block.holders[index] = DROPPED
        block.live -= 1
        self.retained_count -= 1
        size = len(chunk.payloads[index])
        self.retained_bytes -= size
        key = chunk.keys[index]
        self.dropped[key] += 1
        self.dropped_bytes[key] = self.dropped_bytes.get(key, 0) + size
        if not block.live:  # free the chunk's columns once every message in it is gone
            del self.blocks[chunk.first]
            del self.starts[bisect.bisect_left(self.starts, chunk.first)]

    def apply_group_deleted(self, name: str) -> int:
        """Forget a group; returns how many messages that only it held are dropped."""
        group = self.groups.pop(name, None)
        if group is None:
            return 0
        held = [offset for queue in group.pending.values() for offset in queue]
        held += [*group.keyless, *group.keyless_parked]
        held += [offset for offset, d in group.inflight.items() if not d.message.key]
        dropped = 0
        for offset in held:
            found = self._locate(offset)
            if found is None:
                continue
            block, index = found
            block.holders[index] -= 1
            if block.holders[index] <= 0:
                self._drop(block, index)
                dropped += 1
        return dropped

    def apply_expire(self, before_offset: int) -> int:
        """Retention: drop every retained message below `before_offset` from every group holding
        it (counted per group in `expired`); returns how many messages were dropped."""
        dropped = 0
        groups = list(self.groups.values())
        for block in list(self._blocks_from(0)):
            chunk = block.chunk
            if chunk.first >= before_offset:
                break
            for index in list(block.live_indices()):
                offset = chunk.first + index
                if offset >= before_offset:
                    break
                key = chunk.keys[index]
                held = [group.name for group in groups if group.discard(offset, key)]
                self.expired.update(held or [""])
                self._drop(block, index)
                dropped += 1
        return dropped

    def expiry_for_bytes(self, excess: int) -> int:
        """The offset below which dropping the oldest retained messages frees `excess` bytes (or
        everything retained); retention's bytes limit uses it."""
        freed = 0
        for block in self._blocks_from(0):
            chunk = block.chunk
            for index in block.live_indices():
                freed += len(chunk.payloads[index])
                if freed >= excess:
                    return chunk.first + index + 1
        return self.next_offset

    def expiry_for_age(self, oldest_kept_ms: int) -> int:
        """The offset below which every retained message was published before `oldest_kept_ms`."""
        for block in self._blocks_from(0):
            times = block.chunk.times
            for index in block.live_indices():
                if times[index] >= oldest_kept_ms:
                    return block.chunk.first + index
        return self.next_offset

    def apply_release(self, offsets: Iterable[int]) -> None:
        """Delete messages (a moved-away selection, a rolled-back copy); an imported one leaves the
        import index too, so a later move of its selection copies it again."""
        for offset in offsets:
            found = self._locate(offset)
            if found is None:
                continue
            chunk = found[0].chunk
            if chunk.origin_shards is not None and chunk.origin_offsets is not None:
                self.imported.pop((chunk.origin_shards[found[1]], chunk.origin_offsets[found[1]]), None)
            key = chunk.keys[found[1]]
            for group in self.groups.values():
                group.discard(offset, key)
            self._drop(*found)

    def select_slots(
        self, slots: Iterable[int], matches: Callable[[Message], bool], from_offset: int = 0
    ) -> list[Message]:
        """Retained messages of `slots` at or after `from_offset` that match, in offset order.

        The slot test runs in C over each chunk's slot column, so `matches` (and the cost of
        building a message) is paid only for the selected slots' messages.
        """
        wanted = set(slots).__contains__
        found: list[Message] = []
        for block in self._blocks_from(from_offset):
            chunk, holders = block.chunk, block.holders
            start = max(0, from_offset - chunk.first)
            for index in compress(range(len(holders)), map(wanted, chunk.slots)):
                if index >= start and holders[index] != DROPPED:
                    message = chunk.message(index)
                    if matches(message):
                        found.append(message)
        return found

    def rebuild(self, records: Iterable[Record]) -> None:
        for record in records:
            self.apply(record)
        self.retained_bytes = sum(
            len(block.chunk.payloads[index])
            for block in self.blocks.values()
            for index in block.live_indices()
        )
