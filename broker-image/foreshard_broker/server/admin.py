"""Admin operations for routing, fencing and migration (DESIGN §4), on top of `Broker`.

Migration of a selection (slots and/or pinned keys) from shard A to shard B:

    B.ImportBacklog(A.ExportBacklog(from 0))         copy ahead while A serves
    A.Pause -> wait until inflight == 0 (bounded)    fence
    B.ImportBacklog(A.ExportBacklog(from next))      copy the delta
    B.ImportGroupState(A.ExportGroupState)           acked prefixes, in-flight become redeliveries
    UpdateRouting(epoch+1) on every shard            switch: A answers MOVED from now on, and
                                                     lifts its pause of what it no longer owns
    A.Release                                        drain A's copy (also lifts A's pause)

Every step is idempotent: imports skip (source shard, source offset) pairs already present.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from foreshard_broker.routing import RoutingError, RoutingTable, slot_of, validate
from foreshard_broker.server import admin_checks, errors, validation
from foreshard_broker.server.broker import Broker
from foreshard_broker.storage import AckRecord, BatchRecord, Message, ReleaseRecord
from foreshard_broker.storage.base import EMPTY_CHUNK
from foreshard_broker.storage.fileops import sync_directory


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
    """A producer id's last stored batch: its sequence and the indices that batch refused."""

    producer_id: str
    sequence: int
    refused: tuple[int, ...] = ()


class Admin:
    def __init__(self, broker: Broker, routing_file: Path | None = None) -> None:
        self.broker = broker
        self.routing_file = routing_file
        self._paused_since: dict[int | str, float] = {}
        self._routing_lock = asyncio.Lock()
        self._pause_total = 0.0

    def pause_seconds(self, now: float) -> float:
        """Total time slots and keys have spent paused, counting the pauses still open."""
        return self._pause_total + sum(now - since for since in self._paused_since.values())

    def selector(self, slots: Iterable[int], keys: Iterable[str]) -> Selector:
        slots, keys = list(slots), list(keys)
        validation.check_selector(self.broker.limits, self.broker.config.num_slots, slots, keys)
        return Selector(frozenset(slots), frozenset(keys), self.broker.routing.pinned)

    # ------------------------------------------------------------------ routing
    def load_routing(self) -> None:
        """Restore the last accepted routing table (the operator re-pushes it anyway)."""
        if self.routing_file is None or not self.routing_file.exists():
            return
        raw = json.loads(self.routing_file.read_text())
        self.broker.routing = RoutingTable(
            raw["epoch"],
            raw["num_slots"],
            tuple(raw["slot_owners"]),
            raw["pinned"],
            {int(shard): endpoint for shard, endpoint in raw["endpoints"].items()},
        )

    async def update_routing(self, table: RoutingTable) -> int:
        """Validate, persist (fsync in a worker thread, so the data path keeps running), then serve."""
        async with self._routing_lock:  # one update at a time: check, persist and switch together
            return await self._update_routing(table)

    async def _update_routing(self, table: RoutingTable) -> int:
        current = self.broker.routing
        try:
            validate(table, self.broker.config.num_slots)
        except RoutingError as error:
            raise errors.InvalidInput(str(error)) from error
        admin_checks.check_routing_content(self.broker.limits, table)
        admin_checks.check_epoch_step(current.epoch, table.epoch)
        if table.epoch < current.epoch:
            raise errors.StaleEpoch(current.epoch, table.epoch, "older than the table this shard serves")
        if table.epoch == current.epoch:
            if table != current:
                raise errors.StaleEpoch(current.epoch, table.epoch, "same epoch with a different table")
            return current.epoch  # an idempotent retry
        await asyncio.to_thread(self._persist, table)
        self.broker.routing = table
        self._unpause_moved_away(current)
        self.broker.unpark_all()
        return table.epoch

    def _persist(self, table: RoutingTable) -> None:
        if self.routing_file is None:
            return
        body = {
            "epoch": table.epoch,
            "num_slots": table.num_slots,
            "slot_owners": list(table.slot_owners),
            "pinned": dict(table.pinned),
            "endpoints": {str(shard): endpoint for shard, endpoint in table.endpoints.items()},
        }
        temporary = self.routing_file.with_suffix(".tmp")
        with open(temporary, "w") as handle:
            json.dump(body, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.routing_file)
        sync_directory(self.routing_file.parent)  # else a power loss can bring back an older epoch

    # ------------------------------------------------------------------ fencing
    async def pause(self, selector: Selector, retry_after_ms: int) -> tuple[int, int]:
        if retry_after_ms > admin_checks.MAX_RETRY_AFTER_MS:
            raise errors.InvalidInput(
                f"retry_after_ms={retry_after_ms} exceeds {admin_checks.MAX_RETRY_AFTER_MS}; "
                "producers would stall"
            )
        retry = retry_after_ms or self.broker.config.pause_retry_after_ms
        now = time.monotonic()
        for slot in selector.slots:
            self.broker.paused_slots[slot] = retry
            self._paused_since.setdefault(slot, now)
        for key in selector.keys:
            self.broker.paused_keys[key] = retry
            self._paused_since.setdefault(key, now)
        await self.broker.barrier()  # batches accepted before the pause become durable and exportable
        inflight = sum(
            1
            for group in self.broker.state.groups.values()
            for delivery in group.inflight.values()
            if selector.matches(delivery.message)
        )
        return inflight, self.broker.state.next_offset

    def resume(self, selector: Selector) -> None:
        self._unpause(selector.slots, selector.keys)
        self.broker.unpark_all()

    def _unpause(self, slots: Iterable[int], keys: Iterable[str]) -> None:
        now = time.monotonic()
        for slot in slots:
            self._pause_total += now - self._paused_since.pop(slot, now)
            self.broker.paused_slots.pop(slot, None)
        for key in keys:
            self._pause_total += now - self._paused_since.pop(key, now)
            self.broker.paused_keys.pop(key, None)

    def _unpause_moved_away(self, before: RoutingTable) -> None:
        """A pause fences a slot this shard serves: once the slot (or key) moved away, lift it, so
        the slot is not answered PAUSED forever if it ever moves back (MOVED is the answer now).
        Only what this table takes away is lifted (a pause set ahead on a future owner stays)."""
        broker, me = self.broker, self.broker.config.shard
        table = broker.routing
        slots = [
            slot
            for slot in broker.paused_slots
            if before.slot_owners[slot] == me and table.slot_owners[slot] != me
        ]
        keys = [
            key
            for key in broker.paused_keys
            if before.owner_of_key(key) == me and table.owner_of_key(key) != me
        ]
        if slots or keys:
            self._unpause(slots, keys)

    # ------------------------------------------------------------------ backlog copy
    async def export_backlog(
        self, selector: Selector, from_offset: int, chunk: int
    ) -> AsyncIterator[list[Message]]:
        await self.broker.barrier()
        selected = self._select(selector, from_offset)
        chunk = max(1, min(chunk or 1000, self.broker.limits.max_batch_messages))
        for start in range(0, len(selected), chunk):
            yield selected[start : start + chunk]

    def _select(self, selector: Selector, from_offset: int) -> list[Message]:
        slots = selector.slots_to_scan(self.broker.config.num_slots)
        return self.broker.state.select_slots(slots, selector.matches, from_offset)

    def check_source(self, source_shard: int) -> None:
        if source_shard < 0 or source_shard == self.broker.config.shard:
            raise errors.InvalidInput(f"source_shard {source_shard} must be another shard's ordinal (>= 0)")

    async def import_backlog(
        self, source_shard: int, chunks: Iterable[tuple[Selector, list[Message]]]
    ) -> tuple[int, int]:
        """Import the chunks of one copy, all or nothing: every chunk is checked before any is kept."""
        self.check_source(source_shard)
        self.broker._check_writable()
        broker, chunks = self.broker, list(chunks)
        incoming = sum(
            admin_checks.check_imported(
                broker.limits, broker.routing, broker.config.shard, source_shard, messages, selector.matches
            )
            for selector, messages in chunks
        )
        if broker.state.retained_bytes + incoming > broker.limits.max_retained_bytes:
            raise errors.Overloaded(
                f"importing {incoming} bytes would pass the retained limit "
                f"({broker.limits.max_retained_bytes}); "
                "retry after consumers catch up"
            )
        return await self._import(source_shard, [m for _, messages in chunks for m in messages])

    async def _import(self, source_shard: int, messages: list[Message]) -> tuple[int, int]:
        state = self.broker.state
        fresh: list[Message] = []
        skipped = 0
        for message in messages:
            if (source_shard, message.offset) in state.imported:
                skipped += 1
                continue
            offset = state.next_offset + len(fresh)
            fresh.append(
                Message(
                    offset, message.key, message.slot, message.payload, message.headers,
                    message.publish_time_ms, source_shard, message.offset,
                )
            )  # fmt: skip
        if fresh:
            state.next_offset += len(fresh)
            state.account(fresh)
            for message in fresh:  # reserve now so a concurrent retry of the same chunk skips them
                state.imported[(source_shard, message.origin_offset)] = message.offset
            await self.broker._append(BatchRecord.of("", 0, fresh))
            self.broker._make_visible()
        return len(fresh), skipped

    # ------------------------------------------------------------------ group state
    def export_group_state(self, selector: Selector) -> list[GroupPending]:
        out = []
        for name, group in self.broker.state.groups.items():
            pending = sorted(message.offset for message in group.unacked(selector.matches))
            out.append(GroupPending(name, pending))
        return out

    def export_producers(self) -> list[ProducerSeen]:
        state = self.broker.state
        return [
            ProducerSeen(producer, sequence, state.refused.get(producer, ()))
            for producer, sequence in state.producers.items()
        ]

    async def import_group_state(
        self,
        source_shard: int,
        selector: Selector,
        groups: list[GroupPending],
        producers: Iterable[ProducerSeen] = (),
    ) -> int:
        """Mark imported messages acked where the source group had acked them; returns how many.

        Also merges the source's producer sequences (a later sequence wins, persisted before the
        answer), so a producer that resends its last batch to the new owner is de-duplicated there.
        """
        broker, state = self.broker, self.broker.state
        for entry in groups:
            validation.check_name(broker.limits, "group", entry.group)
        merged = [
            BatchRecord(p.producer_id, p.sequence, EMPTY_CHUNK, p.refused)
            for p in producers
            if p.producer_id and p.sequence > state.producers.get(p.producer_id, -1)
        ]
        if merged:  # appended before applied, so a rotation checkpoint cannot claim them early
            durable = [broker.append_record(record) for record in merged]
            for record in merged:
                state.apply_producer(record.producer_id, record.sequence, record.refused)
            await asyncio.gather(*durable)
        total = 0
        for entry in groups:
            await broker.create_group(entry.group, latest=False)
            pending = set(entry.pending_offsets)
            group = broker.group(entry.group)
            done = [
                message.offset
                for message in group.unacked(selector.matches)
                if message.origin_shard == source_shard and message.origin_offset not in pending
            ]
            if done:
                state.apply_acks(entry.group, done)
                await broker.persist(AckRecord(entry.group, done))
                total += len(done)
        broker.unpark_all()
        return total

    # ------------------------------------------------------------------ drain
    async def release(self, selector: Selector) -> int:
        owned = [
            slot for slot in selector.slots if slot in self.broker.routing.slots_of(self.broker.config.shard)
        ]
        owned_keys = [
            key for key in selector.keys if self.broker.routing.owner_of_key(key) == self.broker.config.shard
        ]
        if owned or owned_keys:
            raise errors.InvalidInput(
                f"refusing to release data this shard still owns (slots {owned[:5]}, keys {owned_keys[:5]}); "
                "switch routing first"
            )
        self._unpause(selector.slots, selector.keys)  # not owned: MOVED is the answer, not PAUSED
        await self.broker.barrier()
        offsets = [message.offset for message in self._select(selector, 0)]
        if offsets:
            self.broker.state.apply_release(offsets)
            await self.broker.persist(ReleaseRecord(offsets))
        return len(offsets)

    async def drain(self) -> int:
        self.broker.draining = True
        await self.broker.barrier()
        return self.broker.state.retained_count
