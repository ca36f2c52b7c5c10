"""The broker's in-memory state and the records that change it: state in, record, state out.

The same `apply_*` functions run when a record is created live and when the log is replayed at
start-up, so a restarted broker holds exactly the state it acknowledged before the crash.
A message is retained until every consumer group has acknowledged it (while no group exists,
messages are retained for a group created later from the earliest position).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from foreshard_broker.server.groups import ConsumerGroup
from foreshard_broker.storage import (
    AckRecord,
    BatchRecord,
    CheckpointRecord,
    GroupRecord,
    Message,
    Record,
    ReleaseRecord,
)


class BrokerState:
    def __init__(self) -> None:
        self.retained: dict[int, Message] = {}  # insertion order is offset order
        # slot -> its retained keyed messages (offset order): exports and releases scan one slot's
        # backlog, not every retained message. Keyless messages have no slot and are not indexed.
        self.by_slot: dict[int, dict[int, Message]] = {}
        self.holders: dict[int, int] = {}  # offset -> groups that have not acked it
        self.groups: dict[str, ConsumerGroup] = {}
        self.producers: dict[str, int] = {}  # producer id -> last stored sequence
        # producer id -> indices its last stored batch refused (only while non-empty): bounded by
        # one batch per producer id, and what a duplicate of that batch is answered with again.
        self.refused: dict[str, tuple[int, ...]] = {}
        self.imported: dict[tuple[int, int], int] = {}  # (source shard, source offset) -> local offset
        self.next_offset = 0
        self.retained_bytes = 0
        self.key_backlog: dict[str, int] = {}
        self.key_backlog_bytes: dict[str, int] = {}
        # Arrival totals per key; the broker points these at its LoadTracker once replay is done.
        self.arrived: dict[str, int] = {}
        self.arrived_bytes: dict[str, int] = {}
        # Called with every message a group acknowledged (load metrics hook).
        self.on_ack: Callable[[Message], None] = lambda message: None

    def apply(self, record: Record) -> None:
        if isinstance(record, BatchRecord):
            self.apply_batch(record)
        elif isinstance(record, AckRecord):
            self.apply_acks(record.group, record.offsets)
        elif isinstance(record, GroupRecord):
            self.apply_group(record.group, record.from_offset)
        elif isinstance(record, ReleaseRecord):
            self.apply_release(record.offsets)
        else:
            self.apply_checkpoint(record)

    def apply_checkpoint(self, record: CheckpointRecord) -> None:
        """Merge (never lower) the state a checkpoint carries: replay may start at one."""
        self.next_offset = max(self.next_offset, record.next_offset)
        for name, from_offset in record.groups.items():
            self.apply_group(name, from_offset)
        for producer, sequence in record.producers.items():
            self.apply_producer(producer, sequence, record.refused.get(producer, ()))
        self.imported.update(record.imported)

    def checkpoint(self) -> CheckpointRecord:
        retained = self.retained
        return CheckpointRecord(
            self.next_offset,
            {name: group.from_offset for name, group in self.groups.items()},
            dict(self.producers),
            {origin: local for origin, local in self.imported.items() if local in retained},
            dict(self.refused),
        )

    def apply_producer(self, producer: str, sequence: int, refused: tuple[int, ...]) -> bool:
        """Record a producer's last stored batch unless a later one is known; True if it changed."""
        if sequence < self.producers.get(producer, sequence):
            return False
        self.producers[producer] = sequence
        if refused:
            self.refused[producer] = refused
        else:
            self.refused.pop(producer, None)
        return True

    def lowest_retained(self) -> int:
        return next(iter(self.retained), self.next_offset)

    def apply_batch(self, record: BatchRecord) -> None:
        messages = record.messages
        if record.producer_id:
            self.apply_producer(record.producer_id, record.sequence, record.refused)
        if not messages:
            return
        offsets = [m.offset for m in messages]
        # Bulk dict updates run in C; only the per-key counters need a Python loop.
        self.retained.update(zip(offsets, messages, strict=True))
        backlog, backlog_bytes = self.key_backlog, self.key_backlog_bytes
        arrived, arrived_bytes = self.arrived, self.arrived_bytes
        by_slot = self.by_slot
        for message in messages:  # one pass for all per-key counters: this loop is the hot spot
            key = message.key
            size = len(message.payload)
            if key:
                in_slot = by_slot.get(message.slot)
                if in_slot is None:
                    by_slot[message.slot] = {message.offset: message}
                else:
                    in_slot[message.offset] = message
            backlog[key] = backlog.get(key, 0) + 1
            backlog_bytes[key] = backlog_bytes.get(key, 0) + size
            arrived[key] = arrived.get(key, 0) + 1
            arrived_bytes[key] = arrived_bytes.get(key, 0) + size
        if messages[0].origin_shard >= 0:  # imported batches are never mixed with local ones
            self.imported.update(((m.origin_shard, m.origin_offset), m.offset) for m in messages)
        groups = [group for group in self.groups.values() if offsets[-1] >= group.from_offset]
        for group in groups:
            add = group.add
            for message in messages:
                if message.offset >= group.from_offset:
                    add(message)
        self.holders.update(dict.fromkeys(offsets, len(groups)))
        self.next_offset = max(self.next_offset, offsets[-1] + 1)

    def account(self, messages: Iterable[Message]) -> None:
        """Count accepted (not yet visible) bytes against the memory limit before they are stored."""
        self.retained_bytes += sum(len(message.payload) for message in messages)

    def apply_group(self, name: str, from_offset: int) -> ConsumerGroup:
        group = self.groups.get(name)
        if group is not None:
            return group
        group = ConsumerGroup(name, from_offset)
        self.groups[name] = group
        for offset, message in self.retained.items():
            if offset >= from_offset:
                group.add(message)
                self.holders[offset] += 1
        return group

    def apply_acks(self, group_name: str, offsets: Iterable[int]) -> None:
        """Replay of acknowledgements (live acks go through `ConsumerGroup.ack` + `acked`)."""
        group = self.groups.get(group_name)
        if group is None:
            return
        for offset in offsets:
            message = self.retained.get(offset)
            if message is not None and group.discard(message):
                self.acked(message)

    def acked(self, message: Message) -> None:
        """One group finished with `message`; drop it once no group holds it."""
        self.on_ack(message)
        remaining = self.holders[message.offset] - 1
        self.holders[message.offset] = remaining
        if remaining <= 0:
            self._drop(message)

    def _drop(self, message: Message) -> None:
        del self.retained[message.offset]
        del self.holders[message.offset]
        self.retained_bytes -= len(message.payload)
        key = message.key
        if key:
            in_slot = self.by_slot[message.slot]
            del in_slot[message.offset]
            if not in_slot:
                del self.by_slot[message.slot]
        left = self.key_backlog[key] - 1
        if left:
            self.key_backlog[key] = left
            self.key_backlog_bytes[key] -= len(message.payload)
        else:
            del self.key_backlog[key]
            del self.key_backlog_bytes[key]

    def apply_release(self, offsets: Iterable[int]) -> None:
        for offset in offsets:
            message = self.retained.get(offset)
            if message is None:
                continue
            for group in self.groups.values():
                group.discard(message)
            self._drop(message)

    def select(self, matches: Callable[[Message], bool], from_offset: int = 0) -> list[Message]:
        return [m for offset, m in self.retained.items() if offset >= from_offset and matches(m)]

    def select_slots(
        self, slots: Iterable[int], matches: Callable[[Message], bool], from_offset: int = 0
    ) -> list[Message]:
        """`select` over the retained messages of `slots` only: cost follows those slots' backlog."""
        found: list[Message] = []
        chosen = [self.by_slot[slot] for slot in set(slots) if slot in self.by_slot]
        for in_slot in chosen:
            found += [m for offset, m in in_slot.items() if offset >= from_offset and matches(m)]
        if len(chosen) > 1:
            found.sort(key=lambda m: m.offset)
        return found

    def rebuild(self, records: Iterable[Record]) -> None:
        for record in records:
            self.apply(record)
        self.retained_bytes = sum(len(m.payload) for m in self.retained.values())
