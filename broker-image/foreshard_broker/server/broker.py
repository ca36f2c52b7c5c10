"""Queue semantics in plain asyncio: publish, fetch, ack, nack, ownership and fencing.

Publish path: validate -> dedupe (producer id, epoch, sequence: idempotence.py) -> route every key
(MOVED / PAUSED) -> assign offsets -> append to storage -> await durability -> make visible to
groups in offset order.
Consumers never see a message that is not yet durable, and a producer's ack means "on disk".
Admin operations used by migrations live in `admin.py` on top of this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from foreshard_broker.idempotence import EPOCH_AHEAD_NS, MAX_SEQUENCE, SentBatch, SequenceError, judge
from foreshard_broker.routing import KEYLESS_SLOT, RoutingTable
from foreshard_broker.server import errors, validation
from foreshard_broker.server.config import Batch, BrokerConfig
from foreshard_broker.server.groups import ConsumerGroup, Delivery
from foreshard_broker.server.load import LoadTracker
from foreshard_broker.server.state import BrokerState
from foreshard_broker.storage import (
    AckRecord,
    BatchRecord,
    Chunk,
    ExpireRecord,
    GroupDeletedRecord,
    GroupRecord,
    Message,
    Record,
    Storage,
    StorageError,
)
from foreshard_broker.wire import DRAINING

log = logging.getLogger("foreshard_broker.broker")


Refusal = tuple[int, "errors.Moved | errors.Paused"]  # (index in the batch, reason)
SLOT_CACHE_KEYS = 1 << 17  # distinct keys whose slot is remembered (cleared when exceeded)
EPOCH_FLOOR_NS = 1 << 60  # epochs below this (2006 in ns) are not checked against the clock


@dataclass(frozen=True)
class Stored:
    first_offset: int
    count: int
    duplicate: bool = False
    refusals: list[Refusal] = field(default_factory=list)


class Broker:
    def __init__(self, config: BrokerConfig, storage: Storage, routing: RoutingTable | None = None) -> None:
        self.config = config
        self.limits = config.limits
        self.storage = storage
        self.routing = routing or RoutingTable.single_shard(config.shard, config.num_slots)
        self.state = BrokerState()
        self.load = LoadTracker(config.num_slots, config.rate_window_s, config.max_tracked_keys)
        self.state.on_ack = self.load.acked
        self.state.on_import = self.load.imported
        self.paused_slots: dict[int, int] = {}  # slot -> retry-after ms
        self.paused_keys: dict[str, int] = {}
        self.draining = False
        self.last_publish_at = 0.0  # time.monotonic() of the last publish call
        self.failed: str | None = None
        self._changed: dict[str, asyncio.Event] = {}
        self._unpublished: deque[tuple[asyncio.Future[None], BatchRecord]] = deque()
        self._owns_everything: RoutingTable | None = None  # cache: the table for which that holds
        self._slot_cache: dict[str, int] = {"": KEYLESS_SLOT}
        self.observe_publish: Callable[[float], None] = lambda seconds: None
        self.observe_deliveries: Callable[[list[int]], None] = lambda publish_times_ms: None

    def open(self) -> None:
        """Replay the log; must run inside the event loop before serving."""
        self.storage.checkpoint = self.state.checkpoint
        self.storage.on_failure = self._storage_failed
        self.state.rebuild(self.storage.replay())
        self.load.attach(self.state)
        for name in self.state.groups:
            self._changed[name] = asyncio.Event()
        log.info(
            "recovered",
            extra={"retained": self.state.retained_count, "next_offset": self.state.next_offset},
        )

    # ------------------------------------------------------------------ publish
    async def publish(self, producer_id: str, sequence: int, batch: Batch, epoch: int = 0) -> Stored:
        """Store the messages this shard owns and has not paused; the rest come back as refusals."""
        started = time.perf_counter()
        self.last_publish_at = time.monotonic()  # a drain waits for publishes to stop (main.py)
        self._check_storage()
        nbytes = validation.check_batch(self.limits, producer_id, batch)
        fingerprint = (epoch, len(batch.keys), nbytes)  # the request as a resend must repeat it
        if producer_id:
            original = self._judge(producer_id, sequence, fingerprint)
            if original is not None:
                await self.barrier()  # the original may still be in flight: answer once it is durable
                self._check_storage()  # and never "duplicate" from a log that failed meanwhile
                return self._duplicate(original, batch.keys)
        slots, refusals = self._route(batch.keys)
        refused: tuple[int, ...] = ()
        if refusals:
            refused = tuple(index for index, _ in refusals)
            batch = batch.without(set(refused))
            slots = [slot for index, slot in enumerate(slots) if index not in refused]
            nbytes = sum(map(len, batch.payloads))
        if not batch.keys:
            return Stored(self.state.next_offset, 0, refusals=refusals)
        # after routing: a draining shard still answers MOVED for what it no longer owns (all of
        # it, once the operator scales it in), so a producer with an old table follows the move
        self._check_draining()
        durable, record = self._accept(producer_id, sequence, batch, slots, nbytes, refused, fingerprint)
        try:
            await durable
        except Exception as error:
            raise errors.Unavailable(f"the message log could not be written ({error})") from error
        self._make_visible()
        self.observe_publish(time.perf_counter() - started)
        return Stored(record.chunk.first, len(record.chunk), refusals=refusals)

    def _judge(self, producer_id: str, sequence: int, fingerprint: tuple[int, int, int]) -> SentBatch | None:
        """The stored original a batch resends, or None for a new batch; sequence errors raise."""
        epoch, size, nbytes = fingerprint
        if not 0 < sequence < MAX_SEQUENCE:
            raise errors.InvalidInput(f"with a producer_id, sequence must be 1..2^62-1, got {sequence}")
        if epoch >= MAX_SEQUENCE or (epoch > EPOCH_FLOOR_NS and epoch > time.time_ns() + EPOCH_AHEAD_NS):
            raise errors.InvalidInput(
                f"producer_epoch {epoch} is more than a day ahead of this broker's clock (and must stay "
                "below 2^62); the SDK uses its start time in nanoseconds"
            )
        try:
            return judge(self.state.producers.get(producer_id), producer_id, epoch, sequence, size, nbytes)
        except SequenceError as error:
            raise errors.SequenceRefused(error.reason, str(error)) from error

    def _duplicate(self, original: SentBatch, keys: list[str]) -> Stored:
        """The answer to a resent batch: stored, except what the original refused, refused again.

        The original's refusals are remembered (persisted with the batch, in every checkpoint, and
        carried by ImportGroupState); a refused message was not stored, so it must not be reported
        stored. Its reason is decided now: MOVED if another shard owns the slot, otherwise PAUSED
        (retry soon), and the producer resends it under a new sequence.
        """
        indices = [index for index in original.refused if index < len(keys)]
        refusals: list[Refusal] = []
        if indices:
            table, me, n = self.routing, self.config.shard, self.config.num_slots
            for index in indices:
                key = keys[index]
                slot = zlib.crc32(key.encode()) % n if key else KEYLESS_SLOT
                owner = table.owner(key, slot) if key else me
                if owner != me:
                    refusals.append(
                        (index, errors.Moved(slot, key, owner, table.endpoint(owner), table.epoch))
                    )
                    continue
                paused = self._paused(key, slot) or errors.Paused(
                    slot, key, self.config.pause_retry_after_ms, table.epoch
                )
                refusals.append((index, paused))
        return Stored(original.first_offset, len(keys) - len(refusals), duplicate=True, refusals=refusals)

    def _accept(
        self,
        producer_id: str,
        sequence: int,
        batch: Batch,
        slots: list[int],
        nbytes: int,
        refused: tuple[int, ...] = (),
        fingerprint: tuple[int, int, int] = (0, -1, -1),
    ) -> tuple[asyncio.Future[None], BatchRecord]:
        retention = self.config.retention_max_bytes
        if retention and self.state.retained_bytes + nbytes > retention:
            self._expire(self.state.expiry_for_bytes(self.state.retained_bytes + nbytes - retention))
        if self.state.retained_bytes + nbytes > self.limits.max_retained_bytes:
            raise errors.Overloaded(
                f"broker holds {self.state.retained_bytes} unacknowledged bytes (limit "
                f"{self.limits.max_retained_bytes}); retry after consumers catch up"
            )
        first = self.state.next_offset
        # The batch's columns become the stored chunk as they are: no object per message.
        times = [int(time.time() * 1000)] * len(slots)
        chunk = Chunk(first, batch.keys, slots, batch.payloads, times, batch.headers)
        epoch, size, request_bytes = fingerprint
        record = BatchRecord(producer_id, sequence, chunk, refused, epoch, size, request_bytes)
        # Appended before the state takes the batch: a rotation checkpoint written ahead of it
        # must not claim its sequence (if only the checkpoint reached the disk, the resend of this
        # unacknowledged batch would be answered "duplicate"). A failed append changes nothing.
        durable = self._append(record)
        self.state.next_offset = first + len(slots)
        if producer_id:
            sent = SentBatch(sequence, first, size, request_bytes, refused)
            self.state.apply_producer(producer_id, epoch, sent)
        self.state.retained_bytes += nbytes
        return durable, record

    def _append(self, record: BatchRecord) -> asyncio.Future[None]:
        durable = self.append_record(record)
        self._unpublished.append((durable, record))
        # Visibility must not depend on the publisher still waiting (it may have been cancelled).
        durable.add_done_callback(lambda _: self._make_visible())
        return durable

    def append_record(self, record: Record) -> asyncio.Future[None]:
        try:
            return self.storage.append(record)
        except StorageError as error:
            self._storage_failed(str(error))
            raise errors.Unavailable(
                f"the message log cannot be written ({error}); nothing was stored"
            ) from error

    async def persist(self, record: Record) -> None:
        """Append a record and wait until it is durable; a storage failure is UNAVAILABLE."""
        try:
            await self.append_record(record)
        except StorageError as error:
            raise errors.Unavailable(f"the message log could not be written ({error})") from error

    def _storage_failed(self, reason: str) -> None:
        """Any log write or fsync error: liveness fails and every later write is refused."""
        if self.failed is None:
            self.failed = reason
            log.error("storage failed; refusing writes until restarted", extra={"reason": reason})

    def _check_writable(self) -> None:
        self._check_storage()
        self._check_draining()

    def _check_storage(self) -> None:
        if self.failed:
            raise errors.Unavailable(f"broker storage failed ({self.failed}); it is restarting")
        if self.awaiting_routing:
            raise errors.Unavailable(
                "shard has no routing table yet (started with --await-routing): the operator pushes one"
            )

    def _check_draining(self) -> None:
        if self.draining:
            raise errors.Draining(
                f"{DRAINING}: shard is draining and accepts no new messages (nothing was stored); "
                "refresh routing"
            )

    @property
    def awaiting_routing(self) -> bool:
        return self.config.await_routing and self.routing.epoch == 0

    def _route(self, keys: list[str]) -> tuple[list[int], list[Refusal]]:
        """Slot of every message, and the messages this shard may not take (MOVED / PAUSED)."""
        slots = self._slots(keys)
        table, me = self.routing, self.config.shard
        if self._owns_everything is not table:
            self._owns_everything = table if self._check_owns_everything(table) else None
        if self._owns_everything is table and not (self.paused_slots or self.paused_keys):
            return slots, []  # the common case: nothing to refuse, no per-message lookups
        refusals: list[Refusal] = []
        owners, pinned = table.slot_owners, table.pinned
        for index, (key, slot) in enumerate(zip(keys, slots, strict=True)):
            if not key:
                continue
            owner = pinned.get(key, owners[slot]) if pinned else owners[slot]
            if owner != me:
                refusals.append((index, errors.Moved(slot, key, owner, table.endpoint(owner), table.epoch)))
                continue
            paused = self._paused(key, slot)
            if paused is not None:
                refusals.append((index, paused))
        return slots, refusals

    def _slots(self, keys: list[str]) -> list[int]:
        """Slot of every key. Keys repeat from batch to batch, so a bounded cache of recent keys
        turns the hash into a dict lookup done in C (`map`); only unseen keys are hashed."""
        cache = self._slot_cache
        slots = list(map(cache.get, keys))
        if None not in slots:
            return slots  # type: ignore[return-value]  # no None left: every key was cached
        if len(cache) > SLOT_CACHE_KEYS:
            cache.clear()
            cache[""] = KEYLESS_SLOT
        n = self.config.num_slots
        for index, slot in enumerate(slots):
            if slot is None:
                key = keys[index]
                slots[index] = cache[key] = zlib.crc32(key.encode()) % n
        return slots  # type: ignore[return-value]

    def _check_owns_everything(self, table: RoutingTable) -> bool:
        me = self.config.shard
        return not table.pinned and all(owner == me for owner in table.slot_owners)

    def _paused(self, key: str, slot: int) -> errors.Paused | None:
        if not (self.paused_slots or self.paused_keys):
            return None
        retry = self.paused_keys.get(key)
        if retry is None and key not in self.routing.pinned:
            retry = self.paused_slots.get(slot)
        return None if retry is None else errors.Paused(slot, key, retry, self.routing.epoch)

    def _make_visible(self) -> None:
        """Hand durable batches to the groups strictly in offset order."""
        queue = self._unpublished
        while queue and queue[0][0].done():
            durable, record = queue.popleft()
            if durable.exception() is not None:
                self._storage_failed(str(durable.exception()))
                continue
            self.state.apply_batch(record)
        self._wake_all()

    def compact(self) -> int:
        """Let storage drop what no retained or still-unpublished message needs; returns bytes freed."""
        lowest = self.state.lowest_retained()
        if self._unpublished:
            lowest = min(lowest, self._unpublished[0][1].chunk.first)
        return self.storage.compact(lowest)

    async def barrier(self) -> None:
        """Everything accepted so far is durable and visible (UNAVAILABLE if the log failed)."""
        try:
            await self.storage.barrier()
        except StorageError as error:
            self._storage_failed(str(error))
            raise errors.Unavailable(f"the message log failed ({error})") from error
        finally:
            self._make_visible()

    # ------------------------------------------------------------------ consume
    def group(self, name: str) -> ConsumerGroup:
        group = self.state.groups.get(name)
        if group is None:
            raise errors.NotFound(f"consumer group {name!r} does not exist; create it with Admin.CreateGroup")
        return group

    async def create_group(self, name: str, latest: bool) -> bool:
        validation.check_name(self.limits, "group", name)
        if name in self.state.groups:
            return False
        await self.barrier()
        from_offset = self.state.next_offset if latest else 0
        self.state.apply_group(name, from_offset)
        self._changed[name] = asyncio.Event()
        await self.persist(GroupRecord(name, from_offset))
        return True

    async def delete_group(self, name: str) -> tuple[bool, int]:
        """Forget a group and free what only it held; (deleted, messages dropped)."""
        validation.check_name(self.limits, "group", name)
        if name not in self.state.groups:
            return False, 0
        self._check_writable()
        dropped = self.state.apply_group_deleted(name)
        event = self._changed.pop(name, None)
        if event is not None:
            event.set()  # fetches waiting on it find the group gone (NOT_FOUND)
        await self.persist(GroupDeletedRecord(name))
        log.info("group deleted", extra={"group": name, "released": dropped})
        return True, dropped

    def expire_by_age(self, now_ms: int) -> int:
        """Retention by age (called periodically); returns the messages dropped."""
        age = self.config.retention_max_age_s
        if not age or self.failed:
            return 0
        return self._expire(self.state.expiry_for_age(now_ms - int(age * 1000)))

    def _expire(self, before_offset: int) -> int:
        """Drop every retained message below the offset, for every group (the retention policy)."""
        if self._unpublished:  # never past a batch still on its way to disk: replay applies the
            # ExpireRecord after such batches (they precede it in the log), live they are not held yet
            before_offset = min(before_offset, self._unpublished[0][1].chunk.first)
        if before_offset <= self.state.lowest_retained():
            return 0
        lagging = dict(self.state.expired)
        dropped = self.state.apply_expire(before_offset)
        done = self.append_record(ExpireRecord(before_offset))
        done.add_done_callback(lambda future: future.cancelled() or future.exception())  # failure: on_failure
        for group, count in self.state.expired.items():
            if group and count and not lagging.get(group):
                log.warning(
                    "retention drops messages a lagging group has not consumed", extra={"group": group}
                )
        self._wake_all()
        return dropped

    async def fetch(
        self, name: str, consumer: str, limit: int, max_bytes: int, wait_ms: int
    ) -> list[Delivery]:
        validation.check_fetch(self.limits, name, consumer, limit, max_bytes, wait_ms)
        group = self.group(name)
        limit = limit or self.limits.max_fetch_messages
        max_bytes = max_bytes or self.limits.max_fetch_bytes
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_ms / 1000
        changed = self._changed[name]
        while True:
            if self.state.groups.get(name) is not group:
                raise errors.NotFound(f"consumer group {name!r} was deleted")
            changed.clear()
            now = loop.time()
            group.expire(now)
            deliveries = group.take(
                limit, max_bytes, consumer, now + self.config.ack_deadline_s, self.deliverable
            )
            if deliveries:
                self.observe_deliveries([d.message.publish_time_ms for d in deliveries if d.attempt == 1])
                return deliveries
            if now >= give_up:
                return deliveries
            wake_at = min(give_up, group.next_deadline() or give_up)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=max(wake_at - now, 0.001))

    def deliverable(self, message: Message) -> bool:
        key = message.key
        if not key:
            return True
        table = self.routing
        if table.owner(key, message.slot) != self.config.shard:
            return False
        if not (self.paused_slots or self.paused_keys):
            return True
        if key in self.paused_keys:
            return False
        return key in table.pinned or message.slot not in self.paused_slots

    async def ack(self, name: str, offsets: Sequence[int]) -> tuple[int, list[int]]:
        group = self.group(name)
        acked, unknown = [], []
        for offset in offsets:
            message = group.ack(offset)
            if message is None:
                unknown.append(offset)
            else:
                self.state.acked(message)
                acked.append(offset)
        if acked:
            self.load.group_acked(name, len(acked))
            self._changed[name].set()
            await self.persist(AckRecord(name, acked))
        return len(acked), unknown

    def nack(self, name: str, offsets: Sequence[int]) -> tuple[int, list[int]]:
        group = self.group(name)
        unknown = [offset for offset in offsets if not group.nack(offset)]
        self._changed[name].set()
        return len(offsets) - len(unknown), unknown

    def _wake_all(self) -> None:
        for event in self._changed.values():
            event.set()

    def unpark_all(self) -> None:
        for group in self.state.groups.values():
            group.unpark()
        self._wake_all()
