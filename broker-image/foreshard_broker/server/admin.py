"""Admin operations for routing, fencing and migration (DESIGN §4), on top of `Broker`.

Migration of a selection (slots and/or pinned keys) from shard A to shard B:

    B.ImportBacklog(A.ExportBacklog(from 0))          copy ahead while A serves (repeat, throttled)
    B.ImportFenced(A.Fence(lease, ttl, from next))    fence with a persisted lease that lapses by
                                                      itself; A waits (bounded) for in-flight
                                                      deliveries, answers with the delta and the
                                                      group state in the same reply; B imports both
    UpdateRouting(epoch+1) on A, then on the others   switch: A answers MOVED and lifts its lease;
                                                      A reports what it had stopped fencing (a lease
                                                      that lapsed), and that tail is copied again
                                                      before B serves
    A.Release                                         drain A's copy

Rollback before the switch: A.Unfence(lease) (or let it lapse) and B.Discard(selection).
A target that once owned the selection and lost it without its drain (killed before Release, then
re-created on its old data dir) still holds that old copy and its group state; the first import of
a move drops every message of the selection that this shard does not own and that did not come
from the move's source (see `_drop_stale`), so the old copy is never delivered again.
Every step is idempotent: imports skip (source shard, source offset) pairs already present and
everything at or below the import marks (see imports.py), so a copy re-run after consumption and
compaction imports nothing again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from foreshard_broker.idempotence import merge, snapshot
from foreshard_broker.routing import RoutingError, RoutingTable, validate
from foreshard_broker.server import admin_checks, errors, validation
from foreshard_broker.server.broker import Broker
from foreshard_broker.server.fences import LeaseBook, check_lease
from foreshard_broker.server.fencing import Fencing
from foreshard_broker.server.files import read_json, write_json
from foreshard_broker.server.imports import ImportMarks, item_of
from foreshard_broker.server.selection import Fenced, GroupPending, ProducerSeen, Selector, Switched
from foreshard_broker.storage import AckRecord, BatchRecord, Message, ReleaseRecord
from foreshard_broker.storage.base import EMPTY_CHUNK

MAX_SETTLE_MS = 60_000
log = logging.getLogger("foreshard_broker.admin")
__all__ = ["Admin", "Fenced", "GroupPending", "ProducerSeen", "Selector", "Switched"]


class Admin:
    def __init__(self, broker: Broker, routing_file: Path | None = None, durable: bool = True) -> None:
        self.broker = broker
        self.routing_file = routing_file
        self.durable = durable
        folder = None if routing_file is None else routing_file.parent
        self.fencing = Fencing(broker, LeaseBook(folder and folder / "fences.json", durable))
        self.marks = ImportMarks(folder and folder / "imports.json", durable)
        self._routing_lock = asyncio.Lock()
        self._last_switch = Switched(broker.routing.epoch)
        # Selection item ("slot/N", "key/K") -> the source whose imports alone this shard holds of
        # it (checked by `_drop_stale`); memory only, forgotten whenever this shard loses an item.
        self._clean_for: dict[str, int] = {}

    def pause_seconds(self, now: float) -> float:
        """Total time slots and keys have spent paused, counting the pauses still open."""
        return self.fencing.pause_seconds(now)

    def selector(self, slots: Iterable[int], keys: Iterable[str]) -> Selector:
        slots, keys = list(slots), list(keys)
        validation.check_selector(self.broker.limits, self.broker.config.num_slots, slots, keys)
        return Selector(frozenset(slots), frozenset(keys), self.broker.routing.pinned)

    # ------------------------------------------------------------------ routing
    def load_routing(self) -> None:
        """Restore the last accepted routing table (the operator re-pushes it anyway), the leases
        still held and the import marks."""
        raw = read_json(self.routing_file)
        if raw is not None:
            self.broker.routing = RoutingTable(
                raw["epoch"],
                raw["num_slots"],
                tuple(raw["slot_owners"]),
                raw["pinned"],
                {int(shard): endpoint for shard, endpoint in raw["endpoints"].items()},
            )
        self._last_switch = Switched(
            self.broker.routing.epoch,
            list((raw or {}).get("unfenced_slots", [])),
            list((raw or {}).get("unfenced_keys", [])),
        )
        self.fencing.load()
        self.marks.load()

    async def update_routing(self, table: RoutingTable) -> Switched:
        """Validate, persist (fsync in a worker thread, so the data path keeps running), then serve."""
        async with self._routing_lock:  # one update at a time: check, persist and switch together
            return await self._update_routing(table)

    async def _update_routing(self, table: RoutingTable) -> Switched:
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
            return self._last_switch  # an idempotent retry gets the first answer again
        slots, keys = self._taken_away(current, table)
        # Persisted with the table, so a retried push gets the same report after a restart too.
        switch = Switched(table.epoch, *self.fencing.unfenced(slots, keys))
        await asyncio.to_thread(self._persist, table, switch)
        self.broker.routing = table
        if slots or keys:  # what it lost may stay here as an old copy until released
            self._clean_for.clear()
        await self.fencing.taken_away(slots, keys)
        self.broker.unpark_all()
        self._last_switch = switch
        return switch

    def _taken_away(self, before: RoutingTable, after: RoutingTable) -> tuple[set[int], set[str]]:
        """Slots and pinned keys this shard served under `before` and does not under `after`."""
        me = self.broker.config.shard
        slots = {
            slot
            for slot, (old, new) in enumerate(zip(before.slot_owners, after.slot_owners, strict=True))
            if old == me and new != me
        }
        candidates = {*before.pinned, *after.pinned, *self.broker.paused_keys}
        keys = {k for k in candidates if before.owner_of_key(k) == me and after.owner_of_key(k) != me}
        return slots, keys

    def _persist(self, table: RoutingTable, switch: Switched) -> None:
        if self.routing_file is None:
            return
        body = {
            "unfenced_slots": switch.unfenced_slots,
            "unfenced_keys": switch.unfenced_keys,
            "epoch": table.epoch,
            "num_slots": table.num_slots,
            "slot_owners": list(table.slot_owners),
            "pinned": dict(table.pinned),
            "endpoints": {str(shard): endpoint for shard, endpoint in table.endpoints.items()},
        }
        write_json(self.routing_file, body, durable=True)

    # ------------------------------------------------------------------ fencing
    async def pause(self, selector: Selector, retry_after_ms: int) -> tuple[int, int]:
        """An unleased pause (memory only); moves use `fence`."""
        if retry_after_ms > admin_checks.MAX_RETRY_AFTER_MS:
            raise errors.InvalidInput(
                f"retry_after_ms={retry_after_ms} exceeds {admin_checks.MAX_RETRY_AFTER_MS}; "
                "producers would stall"
            )
        retry = retry_after_ms or self.broker.config.pause_retry_after_ms
        self.fencing.pause(selector.slots, selector.keys, retry)
        await self.broker.barrier()  # batches accepted before the pause become durable and exportable
        return self._inflight(selector), self.broker.state.next_offset

    def resume(self, selector: Selector) -> None:
        self.fencing.resume(selector.slots, selector.keys)

    def _inflight(self, selector: Selector) -> int:
        return sum(
            1
            for group in self.broker.state.groups.values()
            for delivery in group.inflight.values()
            if selector.matches(delivery.message)
        )

    async def fence(
        self,
        lease_id: str,
        selector: Selector,
        ttl_ms: int,
        from_offset: int,
        settle_ms: int,
        retry_after_ms: int = 0,
    ) -> Fenced:
        """Fence `selector` under a lease, let in-flight deliveries settle (bounded), then export the
        delta from `from_offset` and the group state: one round trip for the whole fence."""
        ttl = check_lease(lease_id, ttl_ms)
        if settle_ms > MAX_SETTLE_MS:
            raise errors.InvalidInput(f"settle_ms={settle_ms} exceeds the limit {MAX_SETTLE_MS}")
        self._refuse_unowned(selector, "fence")
        retry = retry_after_ms or self.broker.config.pause_retry_after_ms
        lease, renewed = await self.fencing.grant(lease_id, selector.slots, selector.keys, ttl, retry)
        await self.broker.barrier()  # batches accepted before the fence become durable and exportable
        settled_ms, inflight = await self._settle(selector, settle_ms)
        delta = self._select(selector, from_offset)
        return Fenced(
            lease,
            renewed,
            inflight,
            self.broker.state.next_offset,
            delta,
            self.export_group_state(selector),
            self.export_producers(),
            settled_ms,
        )

    async def _settle(self, selector: Selector, settle_ms: int) -> tuple[int, int]:
        """Wait until the selection has no delivery awaiting an ack, or `settle_ms` passed."""
        started = time.monotonic()
        deadline, delay = started + settle_ms / 1000, 0.0005
        inflight = self._inflight(selector)
        while inflight and time.monotonic() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.005)
            inflight = self._inflight(selector)
        return round((time.monotonic() - started) * 1000), inflight

    async def unfence(self, lease_id: str) -> bool:
        return await self.fencing.lift(lease_id)

    def _refuse_unowned(self, selector: Selector, what: str) -> None:
        routing, me = self.broker.routing, self.broker.config.shard
        slots = [slot for slot in selector.slots if routing.slot_owners[slot] != me]
        keys = [key for key in selector.keys if routing.owner_of_key(key) != me]
        if slots or keys:
            raise errors.InvalidInput(
                f"refusing to {what} what this shard does not own (slots {slots[:5]}, keys {keys[:5]}); "
                "fence on the current owner"
            )

    # ------------------------------------------------------------------ backlog copy
    async def export_backlog(
        self, selector: Selector, from_offset: int, chunk: int, max_bytes: int = 0
    ) -> AsyncIterator[list[Message]]:
        """The selection's messages from `from_offset` on, in chunks; stops after `max_bytes` of
        payload (a throttled copy-ahead resumes from the last chunk's next offset)."""
        await self.broker.barrier()
        selected = self._select(selector, from_offset)
        chunk = max(1, min(chunk or 1000, self.broker.limits.max_batch_messages))
        sent = 0
        for start in range(0, len(selected), chunk):
            part = selected[start : start + chunk]
            if max_bytes:
                part, sent = _within(part, sent, max_bytes)
            yield part
            if max_bytes and sent >= max_bytes:
                return

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
        for selector, _ in chunks:  # one scan per item and source: the next chunks find it done
            await self._drop_stale(source_shard, selector)
        imported = await self._import(source_shard, chunks)
        await self.marks.persist()  # after the imported records are durable
        return imported, sum(len(messages) for _, messages in chunks) - imported

    async def _drop_stale(self, source_shard: int, selector: Selector) -> None:
        """Drop the messages of the selection this shard does not own and did not import from
        `source_shard`: an old copy left by a move away whose Release never ran (the shard was
        killed first and re-created on its data dir). The move that switched it away copied all of
        it to the then new owner, so the source's copy supersedes it; kept, its group state would
        deliver it again, older messages after newer ones. Scans once per item and source (the
        pause's ImportFenced then skips it)."""
        items = [*(f"slot/{slot}" for slot in selector.slots), *(f"key/{key}" for key in selector.keys)]
        if all(self._clean_for.get(item) == source_shard for item in items):
            return
        await self.broker.barrier()
        routing, me = self.broker.routing, self.broker.config.shard
        offsets = [
            message.offset
            for message in self._select(selector, 0)
            if message.origin_shard != source_shard and routing.owner(message.key, message.slot) != me
        ]
        if offsets:
            self.broker.state.apply_release(offsets)
            await self.broker.persist(ReleaseRecord(offsets))
            log.warning(
                "dropped an old copy of a selection this shard lost without a release",
                extra={"messages": len(offsets), "source_shard": source_shard, "items": items[:5]},
            )
        for item in items:
            self._clean_for[item] = source_shard

    async def _import(self, source_shard: int, chunks: list[tuple[Selector, list[Message]]]) -> int:
        """Append what was not imported before: neither in the exact index of retained imports nor
        at or below the import mark of its (source shard, slot or pinned key); returns how many."""
        state, marks = self.broker.state, self.marks
        fresh: list[Message] = []
        items: list[str] = []
        for selector, message in ((s, m) for s, messages in chunks for m in messages):
            item = item_of(message, selector.keys)
            if (source_shard, message.offset) in state.imported or marks.seen(
                source_shard, item, message.offset
            ):
                continue
            items.append(item)
            fresh.append(
                Message(
                    state.next_offset + len(fresh), message.key, message.slot, message.payload,
                    message.headers, message.publish_time_ms, source_shard, message.offset,
                )
            )  # fmt: skip
        if fresh:
            for item, message in zip(items, fresh, strict=True):
                marks.advance(source_shard, item, message.origin_offset)
            state.next_offset += len(fresh)
            state.account(fresh)
            for message in fresh:  # reserve now so a concurrent retry of the same chunk skips them
                state.imported[(source_shard, message.origin_offset)] = message.offset
            await self.broker._append(BatchRecord.of("", 0, fresh))
            self.broker._make_visible()
        return len(fresh)

    async def import_fenced(
        self,
        source_shard: int,
        selector: Selector,
        delta: list[Message],
        groups: list[GroupPending],
        producers: Iterable[ProducerSeen],
    ) -> tuple[int, int, int]:
        """The target's half of a fence: the delta, then the group state; (imported, skipped, acked)."""
        imported, skipped = await self.import_backlog(source_shard, [(selector, delta)])
        acked = await self.import_group_state(source_shard, selector, groups, producers)
        return imported, skipped, acked

    # ------------------------------------------------------------------ group state
    def export_group_state(self, selector: Selector) -> list[GroupPending]:
        out = []
        for name, group in self.broker.state.groups.items():
            pending = sorted(message.offset for message in group.unacked(selector.matches))
            out.append(GroupPending(name, pending))
        return out

    def export_producers(self) -> list[ProducerSeen]:
        producers = self.broker.state.producers.items()
        return [ProducerSeen(producer, snapshot(history)) for producer, history in producers]

    async def import_group_state(
        self,
        source_shard: int,
        selector: Selector,
        groups: list[GroupPending],
        producers: Iterable[ProducerSeen] = (),
    ) -> int:
        """Mark imported messages acked where the source group had acked them; returns how many.

        Also merges the source's producer histories (a newer epoch wins, the same epoch unites;
        persisted before the answer), so a producer that resends a recent batch to the new owner is
        de-duplicated there. Everything is checked before anything changes.
        """
        broker, state = self.broker, self.broker.state
        for entry in groups:
            validation.check_name(broker.limits, "group", entry.group)
        producers = list(producers)
        now_ns = time.time_ns()
        for seen in producers:
            admin_checks.check_producer_history(broker.limits, seen.producer_id, seen.history, now_ns)
        merged = [
            BatchRecord(
                seen.producer_id,
                b.sequence,
                EMPTY_CHUNK,
                b.refused,
                seen.history.epoch,
                b.size,
                b.payload_bytes,
            )
            for seen in producers
            if seen.history.epoch >= getattr(state.producers.get(seen.producer_id), "epoch", -1)
            for b in seen.history.batches
        ]
        if merged:  # appended before applied, so a rotation checkpoint cannot claim them early
            durable = [broker.append_record(record) for record in merged]
            for seen in producers:
                local = state.producers.get(seen.producer_id)
                state.producers[seen.producer_id] = merge(local, seen.history) or seen.history
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
        """Delete the copy of a selection this shard no longer owns (the move's drain)."""
        self._refuse_owned(selector, "release")
        await self.fencing.taken_away(set(selector.slots), set(selector.keys))  # MOVED, not PAUSED
        return await self._drop(selector)

    async def discard(self, selector: Selector) -> int:
        """Delete a rolled-back move's partial copy here, so a later move copies it from scratch."""
        self._refuse_owned(selector, "discard")
        return await self._drop(selector)

    async def _drop(self, selector: Selector) -> int:
        await self.broker.barrier()
        offsets = [message.offset for message in self._select(selector, 0)]
        if offsets:
            self.broker.state.apply_release(offsets)
            await self.broker.persist(ReleaseRecord(offsets))
        self.marks.forget(selector.slots, selector.keys)
        await self.marks.persist()
        return len(offsets)

    def _refuse_owned(self, selector: Selector, what: str) -> None:
        routing, me = self.broker.routing, self.broker.config.shard
        owned = [slot for slot in selector.slots if routing.slot_owners[slot] == me]
        owned_keys = [key for key in selector.keys if routing.owner_of_key(key) == me]
        if owned or owned_keys:
            raise errors.InvalidInput(
                f"refusing to {what} data this shard still owns (slots {owned[:5]}, keys {owned_keys[:5]}); "
                "switch routing first"
            )

    async def drain(self) -> int:
        self.broker.draining = True
        await self.broker.barrier()
        return self.broker.state.retained_count


def _within(messages: list[Message], sent: int, limit: int) -> tuple[list[Message], int]:
    """The prefix of `messages` sent while fewer than `limit` payload bytes went out."""
    taken = []
    for message in messages:
        if sent >= limit:
            break
        taken.append(message)
        sent += len(message.payload)
    return taken, sent
