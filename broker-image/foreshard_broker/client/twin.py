"""In-memory twin of a set of brokers, implementing :class:`AdminTransport` without gRPC.

It keeps the semantics the SDK relies on from the real broker (issue 3, ``proto/foreshard/v1``):

* per (group, key) strict order with one delivery in flight per key; redelivery after a nack or the
  ack deadline, at the front of the key's queue;
* ownership by routing table: a message of a slot the shard does not own is refused with ``MOVED``,
  one of a paused slot with ``PAUSED``, and the rest of its batch is stored; fetch never delivers a
  paused or foreign slot;
* idempotent publish judged by ``foreshard_broker.idempotence`` as on the broker (producer epoch,
  per-shard sequences, a window of recent batches): a resend of a recent stored batch is answered OK
  without being stored, refusing again what that batch refused; a gap, an unknown older sequence or
  an older epoch is REJECTED with ``sequence_error``; a batch of which nothing was stored does not
  consume its sequence; producer histories move with a slot's group state;
* a pause is lifted when the slot moves away (new table or release), as on the real broker;
* broker-local offsets; an import remembers (source shard, source offset) so a retried copy is
  skipped, and group state moves as the source offsets a group has not acknowledged.

A round trip can be injected (``round_trip_s``) and publish replies can be lost
(``lose_publish_replies``): that is how unit tests exercise retries and how the prefetch benchmark
models the network.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from foreshard_broker.client.transport import (
    Copied,
    Delivery,
    Fenced,
    FetchRequest,
    OutboundMessage,
    PublishOutcome,
    PublishStatus,
    RoutingTable,
    Selection,
    TransportError,
    slot_of,
)
from foreshard_broker.idempotence import (
    ProducerHistory,
    SentBatch,
    SequenceError,
    judge,
    merge,
    remember,
    snapshot,
)

KEYLESS_SLOT = -1
_STORED = PublishOutcome(PublishStatus.OK)


@dataclass
class Stored:
    key: str | None
    payload: bytes
    slot: int
    offset: int
    publish_time: float
    origin: tuple[int, int] | None = None


@dataclass
class GroupState:
    """One consumer group on one shard."""

    pending: dict[str | None, deque[Stored]] = field(default_factory=dict)
    inflight: dict[int, tuple[Stored, float]] = field(default_factory=dict)
    busy: set[str | None] = field(default_factory=set)
    ready: OrderedDict[str | None, None] = field(default_factory=OrderedDict)
    parked: set[str | None] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)  # offset -> deliveries so far (unacked)


class TwinBroker:
    """One shard: its log, group state, routing table and pauses."""

    def __init__(self, shard: int, table: RoutingTable, clock: Callable[[], float]) -> None:
        self.shard = shard
        self.table = table
        self.clock = clock
        self.ack_deadline_s = 30.0
        self.log: dict[int, Stored] = {}
        self._offsets = itertools.count()
        self.imported: set[tuple[int, int]] = set()
        self.producers: dict[str, ProducerHistory] = {}
        self.paused: set[int] = set()
        self.leases: dict[str, set[int]] = {}
        self.groups: dict[str, GroupState] = {}
        self.changed = asyncio.Event()

    def _slot(self, key: str | None) -> int:
        return KEYLESS_SLOT if key is None else slot_of(key, self.table.num_slots)

    def owns(self, key: str | None, slot: int) -> bool:
        return key is None or self.table.owner(key, slot) == self.shard

    def servable(self, stored: Stored) -> bool:
        return self.owns(stored.key, stored.slot) and stored.slot not in self.paused

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # --- data path ---------------------------------------------------------------------------
    def publish(
        self, producer: str, sequence: int, messages: Sequence[OutboundMessage], epoch: int = 0
    ) -> list[PublishOutcome]:
        size, nbytes = len(messages), sum(m.size for m in messages)
        if producer:
            # Checked before ownership, like the real broker: a retry of a batch stored before the
            # slot moved away must be answered "stored", not MOVED (which would make a duplicate);
            # what the original refused is refused again (it was not stored).
            try:
                original = judge(self.producers.get(producer), producer, epoch, sequence, size, nbytes)
            except SequenceError as error:
                return [
                    PublishOutcome(PublishStatus.REJECTED, reason=str(error), sequence_error=error.reason)
                ] * size
            if original is not None:
                return self._duplicate(original, messages)
        outcomes = [self._refusal(message) for message in messages]
        refused = tuple(i for i, outcome in enumerate(outcomes) if outcome.status is not PublishStatus.OK)
        if producer and len(refused) < len(messages):  # an empty producer id opts out, as on the broker
            sent = SentBatch(sequence, 0, size, nbytes, refused)
            self.producers[producer] = remember(self.producers.get(producer), epoch, sent)
        now = self.clock()
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome.status is PublishStatus.OK:
                self._store(
                    Stored(message.key, message.payload, self._slot(message.key), next(self._offsets), now)
                )
        self._notify()
        return outcomes

    def _duplicate(self, original: SentBatch, messages: Sequence[OutboundMessage]) -> list[PublishOutcome]:
        outcomes = [PublishOutcome(PublishStatus.OK, reason="duplicate")] * len(messages)
        for index in original.refused:
            if index < len(messages):
                outcome = self._refusal(messages[index])
                if outcome.status is PublishStatus.OK:  # owned and serving now: retry soon
                    outcome = PublishOutcome(
                        PublishStatus.PAUSED,
                        retry_after_s=0.005,
                        epoch=self.table.epoch,
                        slot=outcome.slot,
                    )
                outcomes[index] = outcome
        return outcomes

    def _refusal(self, message: OutboundMessage) -> PublishOutcome:
        slot = self._slot(message.key)
        if not self.owns(message.key, slot):
            owner = self.table.owner(message.key or "", slot)
            return PublishOutcome(
                PublishStatus.MOVED, owner, self.table.endpoint(owner), self.table.epoch, slot=slot
            )
        if slot in self.paused:
            return PublishOutcome(
                PublishStatus.PAUSED, retry_after_s=0.005, epoch=self.table.epoch, slot=slot
            )
        return _STORED

    def _store(self, stored: Stored) -> None:
        self.log[stored.offset] = stored
        for group in self.groups.values():
            self._enqueue(group, stored)

    @staticmethod
    def _enqueue(group: GroupState, stored: Stored) -> None:
        group.pending.setdefault(stored.key, deque()).append(stored)
        if stored.key not in group.busy:
            group.ready[stored.key] = None

    def create_group(self, name: str, latest: bool = False) -> GroupState:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = GroupState()
            for stored in () if latest else self.log.values():
                self._enqueue(group, stored)
        return group

    def _group(self, name: str) -> GroupState:
        group = self.groups.get(name)
        if group is None:
            raise TransportError(f"consumer group {name!r} does not exist")
        return group

    def fetch(self, request: FetchRequest) -> list[Delivery]:
        if request.group not in self.groups:  # as GrpcTransport: join from the latest, come back empty
            self.create_group(request.group, latest=True)
            return []
        group = self.groups[request.group]
        self._expire(group)
        out: list[Delivery] = []
        budget = request.max_bytes
        for key in list(group.ready):
            queue = group.pending.get(key)
            if len(out) >= request.max_messages or budget <= 0:
                break
            if not queue or key in group.busy:
                del group.ready[key]
                continue
            head = queue[0]
            if not self.servable(head):
                del group.ready[key]
                group.parked.add(key)
                continue
            if len(head.payload) > budget and out:
                break
            out.append(self._start(group, queue))
            budget -= len(head.payload)
        return out

    def _start(self, group: GroupState, queue: deque[Stored]) -> Delivery:
        stored = queue.popleft()
        group.inflight[stored.offset] = (stored, self.clock() + self.ack_deadline_s)
        attempt = group.attempts[stored.offset] = group.attempts.get(stored.offset, 0) + 1
        if stored.key is not None:
            group.busy.add(stored.key)
            group.ready.pop(stored.key, None)
        elif not queue:
            group.ready.pop(None, None)
        return Delivery(
            stored.key,
            stored.payload,
            stored.slot,
            stored.offset,
            str(stored.offset),
            attempt=attempt,
            publish_time=stored.publish_time,
        )

    def _expire(self, group: GroupState) -> None:
        now = self.clock()
        self._requeue(group, [o for o, (_, deadline) in group.inflight.items() if deadline <= now])

    def _requeue(self, group: GroupState, offsets: Iterable[int]) -> None:
        """Put unacked deliveries back at the front of their key's queue, in offset order."""
        taken = sorted(
            (group.inflight.pop(o)[0] for o in offsets if o in group.inflight), key=lambda s: -s.offset
        )
        for stored in taken:
            group.busy.discard(stored.key)
            group.pending.setdefault(stored.key, deque()).appendleft(stored)
            group.ready[stored.key] = None

    def ack(self, group_name: str, offsets: Iterable[int], negative: bool = False) -> None:
        group = self._group(group_name)  # NOT_FOUND on the real broker
        for offset in offsets:
            if offset not in group.inflight:
                continue  # unknown: already acked, redelivered elsewhere or moved away
            if negative:
                self._requeue(group, [offset])
                continue
            stored, _ = group.inflight.pop(offset)
            group.attempts.pop(offset, None)
            group.busy.discard(stored.key)
            if group.pending.get(stored.key):
                group.ready[stored.key] = None
        self._notify()

    def backlog(self) -> int:
        if not self.groups:
            return len(self.log)
        return max(sum(map(len, g.pending.values())) + len(g.inflight) for g in self.groups.values())

    # --- admin -------------------------------------------------------------------------------
    def set_table(self, table: RoutingTable) -> None:
        if table.epoch < self.table.epoch:
            raise TransportError(f"stale epoch {table.epoch} < {self.table.epoch}")
        before, self.table = self.table, table
        gone = {
            slot
            for slot in range(table.num_slots)
            if before.slot_owners[slot] == self.shard and table.slot_owners[slot] != self.shard
        }
        self.paused -= gone
        for lease_id, slots in list(self.leases.items()):
            slots -= gone
            if not slots:
                del self.leases[lease_id]
        self._unpark()

    def resume(self, slot: int) -> None:
        self.paused.discard(slot)
        self._unpark()

    def _unpark(self) -> None:
        for group in self.groups.values():
            for key in group.parked:
                group.ready[key] = None
            group.parked.clear()
        self._notify()

    def inflight(self, slot: int) -> int:
        return sum(1 for g in self.groups.values() for s, _ in g.inflight.values() if s.slot == slot)

    def export(self, slot: int, from_offset: int) -> list[Stored]:
        return [s for o, s in self.log.items() if o >= from_offset and s.slot == slot]

    def import_messages(self, source: int, messages: Sequence[Stored]) -> None:
        for stored in messages:
            origin = (source, stored.offset)
            if origin not in self.imported:
                self.imported.add(origin)
                self._store(
                    Stored(
                        stored.key,
                        stored.payload,
                        stored.slot,
                        next(self._offsets),
                        stored.publish_time,
                        origin,
                    )
                )
        self._notify()

    def export_group_state(self, slot: int) -> dict[str, set[int]]:
        """Per group: source offsets of the slot's messages not acknowledged (in flight included)."""
        state = {}
        for name, group in self.groups.items():
            pending = {s.offset for q in group.pending.values() for s in q if s.slot == slot}
            state[name] = pending | {o for o, (s, _) in group.inflight.items() if s.slot == slot}
        return state

    def import_group_state(self, source: int, slot: int, state: dict[str, set[int]]) -> None:
        for name, unacked in state.items():
            group = self.create_group(name)
            for key, queue in group.pending.items():
                kept = [s for s in queue if not _acked_at_source(s, source, slot, unacked)]
                if len(kept) != len(queue):
                    group.pending[key] = deque(kept)

    def import_producers(self, histories: dict[str, ProducerHistory]) -> None:
        """Merge a source's producer histories (a newer epoch wins), as ImportGroupState does."""
        for producer, history in histories.items():
            merged = merge(self.producers.get(producer), snapshot(history))
            if merged is not None:
                self.producers[producer] = merged

    def release(self, slot: int, forget_imports: bool = False) -> int:
        if self.table.slot_owners[slot] == self.shard:  # as the broker: switch routing first
            raise TransportError(f"refusing to drop slot {slot}: this shard still owns it", refused=True)
        self.paused.discard(slot)
        gone = [o for o, s in self.log.items() if s.slot == slot]
        for offset in gone:
            origin = self.log.pop(offset).origin
            if forget_imports and origin is not None:
                self.imported.discard(origin)
        for group in self.groups.values():
            for key in [k for k, q in group.pending.items() if q and q[0].slot == slot]:
                del group.pending[key]
                group.ready.pop(key, None)
                group.parked.discard(key)
            for offset in [o for o, (s, _) in group.inflight.items() if s.slot == slot]:
                stored, _ = group.inflight.pop(offset)  # in flight: its ack is now unknown, as on the broker
                group.attempts.pop(offset, None)
                group.busy.discard(stored.key)
        return len(gone)


def _acked_at_source(stored: Stored, source: int, slot: int, unacked: set[int]) -> bool:
    origin = stored.origin
    return stored.slot == slot and origin is not None and origin[0] == source and origin[1] not in unacked


class TwinNetwork:
    """Twin brokers addressed by endpoint (``twin-<shard>``), slots dealt round robin at epoch 1."""

    def __init__(self, shards: int, num_slots: int = 1024) -> None:
        loop_time = asyncio.get_running_loop().time
        endpoints = {shard: f"twin-{shard}" for shard in range(shards)}
        owners = tuple(slot % shards for slot in range(num_slots))
        table = RoutingTable(1, num_slots, owners, {}, endpoints)
        self.brokers = {endpoints[s]: TwinBroker(s, table, loop_time) for s in range(shards)}

    @property
    def endpoints(self) -> list[str]:
        return sorted(self.brokers)

    def broker(self, endpoint: str) -> TwinBroker:
        try:
            return self.brokers[endpoint]
        except KeyError:
            raise TransportError(f"no broker at {endpoint}", no_effect=True) from None


class TwinTransport:
    """:class:`AdminTransport` over a :class:`TwinNetwork`, with an injected round trip."""

    def __init__(self, network: TwinNetwork, round_trip_s: float = 0.0) -> None:
        self.network = network
        self.round_trip_s = round_trip_s
        self.lose_publish_replies = 0
        self.calls: dict[str, int] = {}

    async def _hop(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        await asyncio.sleep(self.round_trip_s / 2)

    async def routing(self, endpoint: str) -> RoutingTable:
        await self._hop("routing")
        table = self.network.broker(endpoint).table
        await self._hop("routing-reply")
        return table

    async def publish(
        self,
        endpoint: str,
        producer_id: str,
        sequence: int,
        messages: Sequence[OutboundMessage],
        epoch: int = 0,
    ) -> list[PublishOutcome]:
        await self._hop("publish")
        outcome = self.network.broker(endpoint).publish(producer_id, sequence, messages, epoch)
        await self._hop("publish-reply")
        if self.lose_publish_replies > 0:
            self.lose_publish_replies -= 1
            raise TransportError("reply lost (injected)")
        return outcome

    async def fetch(self, endpoint: str, request: FetchRequest) -> list[Delivery]:
        await self._hop("fetch")
        broker = self.network.broker(endpoint)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_s
        out = broker.fetch(request)
        while not out and deadline > loop.time():
            try:
                await asyncio.wait_for(broker.changed.wait(), deadline - loop.time())
            except TimeoutError:
                break
            out = broker.fetch(request)
        await self._hop("fetch-reply")
        return out

    async def ack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None:
        await self._hop("ack")
        self.network.broker(endpoint).ack(group, map(int, receipts))
        await self._hop("ack-reply")

    async def nack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None:
        await self._hop("nack")
        self.network.broker(endpoint).ack(group, map(int, receipts), negative=True)
        await self._hop("nack-reply")

    async def create_group(self, endpoint: str, group: str) -> None:
        await self._hop("create-group")
        self.network.broker(endpoint).create_group(group)

    async def backlog(self, endpoint: str) -> int:
        await self._hop("backlog")
        return self.network.broker(endpoint).backlog()

    async def close(self) -> None:
        return None

    # --- admin (slots only: the twin does not move pinned keys) --------------------------------
    async def copy_backlog(
        self, source: str, target: str, selection: Selection, from_offset: int, max_bytes: int = 0
    ) -> int:
        return (await self.copy(source, target, selection, from_offset, max_bytes)).next_offset

    async def copy(
        self, source: str, target: str, selection: Selection, from_offset: int, max_bytes: int = 0
    ) -> Copied:
        await self._hop("copy")
        origin = self.network.broker(source)
        chunk = [s for slot in _slots(selection) for s in origin.export(slot, from_offset)]
        chunk.sort(key=lambda stored: stored.offset)
        self.network.broker(target).import_messages(origin.shard, chunk)
        return Copied(chunk[-1].offset + 1 if chunk else from_offset, len(chunk))

    async def fence(
        self,
        source: str,
        target: str,
        selection: Selection,
        lease_id: str,
        ttl_s: float,
        from_offset: int,
        settle_s: float,
    ) -> Fenced:
        """Pause and wait for in-flight deliveries to settle; the twin's lease never lapses."""
        await self._hop("fence")
        origin = self.network.broker(source)
        slots = _slots(selection)
        renewed = origin.leases.get(lease_id) == set(slots)
        origin.leases[lease_id] = set(slots)
        origin.paused.update(slots)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle_s
        while sum(map(origin.inflight, slots)) and loop.time() < deadline:
            await asyncio.sleep(0.001)
        inflight = sum(map(origin.inflight, slots))
        high = max(origin.log, default=-1) + 1
        destination = self.network.broker(target)
        before = len(destination.log)
        await self.copy_backlog(source, target, selection, from_offset)
        for slot in slots:
            destination.import_group_state(origin.shard, slot, origin.export_group_state(slot))
        destination.import_producers(origin.producers)
        return Fenced(inflight, high, len(destination.log) - before, renewed, 0)

    async def connect(self, endpoints: Iterable[str], timeout_s: float) -> None:
        """The twin has no connections to open."""

    async def unfence(self, source: str, lease_id: str) -> bool:
        await self._hop("unfence")
        broker = self.network.broker(source)
        slots = broker.leases.pop(lease_id, None)
        for slot in slots or ():
            broker.resume(slot)
        return slots is not None

    async def discard(self, target: str, selection: Selection) -> int:
        await self._hop("discard")
        broker = self.network.broker(target)
        return sum(broker.release(slot, forget_imports=True) for slot in _slots(selection))

    async def switch_source(
        self, source: str, target: str, table: RoutingTable, selection: Selection, from_offset: int
    ) -> bool:
        await self.update_routing(source, table)
        return False

    async def update_routing(self, endpoint: str, table: RoutingTable) -> None:
        await self._hop("update-routing")
        self.network.broker(endpoint).set_table(table)

    async def release(self, endpoint: str, selection: Selection) -> None:
        await self._hop("release")
        for slot in _slots(selection):
            self.network.broker(endpoint).release(slot)


def _slots(selection: Selection) -> list[int]:
    if selection.keys:
        raise TransportError("the twin moves slots only, not pinned keys", refused=True)
    return list(selection.slots)
