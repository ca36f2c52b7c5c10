"""In-memory twin of a set of brokers, implementing :class:`AdminTransport` without gRPC.

Same semantics the SDK relies on from the real broker (issue 3):

* per (group, key) strict order: a key's next message is not delivered while an earlier one is
  unacked (``key_window`` raises that to N consecutive messages, all to one consumer);
* redelivery after a nack or the ack deadline, in order;
* ownership by routing table: publishes to a slot the shard does not own answer ``MOVED``, to a
  paused slot ``PAUSED``; fetch never delivers a paused or foreign slot; acks of a foreign slot raise
  :class:`Moved`;
* producer id + sequence de-duplication, kept with the slot's messages so it survives a move;
* offsets per slot preserved by export/import, so group state moves as "acked up to offset".

Round trip and lost replies can be injected (``round_trip_s``, ``lose_publish_replies``), which is
how unit tests exercise retries and the prefetch benchmark models network delay.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from foreshard_broker.client.transport import (
    Delivery,
    FetchRequest,
    Moved,
    OutboundMessage,
    PublishOutcome,
    PublishStatus,
    RoutingTable,
    TransportError,
)

KEYLESS_SLOT = -1


def fnv1a_slot(key: str, slot_count: int) -> int:
    """FNV-1a 32-bit over UTF-8: stable across processes (unlike ``hash``)."""
    value = 0x811C9DC5
    for byte in key.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value % slot_count


@dataclass
class Stored:
    key: str | None
    payload: bytes
    slot: int
    offset: int
    producer: str
    sequence: int
    publish_time: float


@dataclass
class GroupState:
    """One consumer group on one shard."""

    pending: dict[str | None, deque[Stored]] = field(default_factory=dict)
    inflight: dict[str, tuple[Stored, float]] = field(default_factory=dict)
    inflight_per_key: dict[str | None, int] = field(default_factory=dict)
    ready: OrderedDict[str | None, None] = field(default_factory=OrderedDict)
    acked: dict[str, int] = field(default_factory=dict)  # key -> highest acked offset
    parked: set[str | None] = field(default_factory=set)


class TwinBroker:
    """One shard: slot logs, group state, routing, pauses."""

    def __init__(
        self, shard: str, table: RoutingTable, clock: Callable[[], float], key_window: int = 1
    ) -> None:
        self.shard = shard
        self.table = table
        self.clock = clock
        self.key_window = key_window
        self.ack_deadline_s = 30.0
        self.logs: dict[int, list[Stored]] = {}
        self.next_offset: dict[int, int] = {}
        self.seen: dict[int, set[tuple[str, int]]] = {}
        self.paused: set[int] = set()
        self.groups: dict[str, GroupState] = {}
        self.changed = asyncio.Event()
        self._receipts = itertools.count(1)

    def owns(self, key: str | None, slot: int) -> bool:
        return key is None or self.table.shard_for(key, slot) == self.shard

    def servable(self, key: str | None, slot: int) -> bool:
        return self.owns(key, slot) and slot not in self.paused

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # --- data path ---------------------------------------------------------------------------
    def slot_of(self, key: str) -> int:
        return fnv1a_slot(key, self.table.slot_count)

    def publish(self, producer: str, messages: Sequence[OutboundMessage]) -> list[PublishOutcome]:
        outcomes = []
        for message in messages:
            slot = KEYLESS_SLOT if message.key is None else self.slot_of(message.key)
            outcomes.append(self._append(producer, message, slot))
        self._notify()
        return outcomes

    def _append(self, producer: str, message: OutboundMessage, slot: int) -> PublishOutcome:
        if not self.owns(message.key, slot):
            owner = self.table.shard_for(message.key or "", slot)
            return PublishOutcome(PublishStatus.MOVED, owner=owner, epoch=self.table.epoch)
        if slot in self.paused:
            return PublishOutcome(PublishStatus.PAUSED, retry_after_s=0.005)
        seen = self.seen.setdefault(slot, set())
        if (producer, message.sequence) in seen:
            return PublishOutcome(PublishStatus.OK, reason="duplicate")
        offset = self.next_offset.get(slot, 0)
        stored = Stored(message.key, message.payload, slot, offset, producer, message.sequence, self.clock())
        self._store(stored)
        return PublishOutcome(PublishStatus.OK)

    def _store(self, stored: Stored) -> None:
        self.logs.setdefault(stored.slot, []).append(stored)
        self.next_offset[stored.slot] = stored.offset + 1
        self.seen.setdefault(stored.slot, set()).add((stored.producer, stored.sequence))
        for group in self.groups.values():
            self._enqueue(group, stored)

    def _enqueue(self, group: GroupState, stored: Stored) -> None:
        group.pending.setdefault(stored.key, deque()).append(stored)
        if not group.inflight_per_key.get(stored.key):
            group.ready[stored.key] = None

    def _group(self, name: str) -> GroupState:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = GroupState()
            for log in self.logs.values():
                for stored in log:
                    self._enqueue(group, stored)
        return group

    def fetch(self, request: FetchRequest) -> list[Delivery]:
        group = self._group(request.group)
        self._expire(group)
        out: list[Delivery] = []
        budget = request.max_bytes
        for key in list(group.ready):
            if len(out) >= request.max_messages:
                break
            queue = group.pending.get(key)
            if not queue:
                del group.ready[key]
                continue
            if not self.servable(key, queue[0].slot):
                del group.ready[key]
                group.parked.add(key)
                continue
            budget = self._take(group, key, queue, request, out, budget)
            if budget <= 0:
                break
        return out

    def _take(
        self,
        group: GroupState,
        key: str | None,
        queue: deque[Stored],
        request: FetchRequest,
        out: list[Delivery],
        budget: int,
    ) -> int:
        window = 1 << 30 if key is None else self.key_window
        while queue and group.inflight_per_key.get(key, 0) < window and len(out) < request.max_messages:
            stored = queue[0]
            size = len(stored.payload) + len(stored.key or "")
            if size > budget and out:
                break
            queue.popleft()
            receipt = f"{self.shard}/{stored.slot}/{stored.offset}/{next(self._receipts)}"
            group.inflight[receipt] = (stored, self.clock() + self.ack_deadline_s)
            group.inflight_per_key[key] = group.inflight_per_key.get(key, 0) + 1
            out.append(
                Delivery(
                    stored.key,
                    stored.payload,
                    stored.slot,
                    stored.offset,
                    receipt,
                    publish_time=stored.publish_time,
                )
            )
            budget -= size
        if key is not None or not queue:
            group.ready.pop(key, None)
        return budget

    def _expire(self, group: GroupState) -> None:
        now = self.clock()
        expired = [receipt for receipt, (_, deadline) in group.inflight.items() if deadline <= now]
        self._requeue(group, expired)

    def _requeue(self, group: GroupState, receipts: Sequence[str]) -> None:
        """Put unacked deliveries back at the front of their key's queue, keeping offset order."""
        taken = sorted(
            (group.inflight.pop(r)[0] for r in receipts if r in group.inflight), key=lambda s: -s.offset
        )
        for stored in taken:
            group.inflight_per_key[stored.key] -= 1
            group.pending.setdefault(stored.key, deque()).appendleft(stored)
            group.ready[stored.key] = None

    def ack(self, group_name: str, receipts: Sequence[str], negative: bool = False) -> None:
        group = self._group(group_name)
        for receipt in receipts:
            slot = int(receipt.split("/")[1])
            entry = group.inflight.get(receipt)
            if entry is None and not receipt.startswith(f"{self.shard}/"):
                raise Moved(self.table.slots[slot] if slot >= 0 else "", self.table.epoch)
            if entry is None:
                continue  # already acked, or expired and redelivered: acks are idempotent
            if negative:
                self._requeue(group, [receipt])
                continue
            stored, _ = group.inflight.pop(receipt)
            group.inflight_per_key[stored.key] -= 1
            if stored.key is not None:
                group.acked[stored.key] = max(group.acked.get(stored.key, -1), stored.offset)
            if group.pending.get(stored.key) and not group.inflight_per_key[stored.key]:
                group.ready[stored.key] = None
        self._notify()

    def backlog(self) -> int:
        if not self.groups:
            return sum(len(log) for log in self.logs.values())
        return max(sum(len(q) for q in g.pending.values()) + len(g.inflight) for g in self.groups.values())

    # --- admin -------------------------------------------------------------------------------
    def set_table(self, table: RoutingTable) -> None:
        if table.epoch < self.table.epoch:
            raise TransportError(f"stale epoch {table.epoch} < {self.table.epoch}")
        self.table = table
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

    def export_group_state(self, slot: int) -> dict[str, dict[str, int]]:
        return {
            name: {k: o for k, o in g.acked.items() if self.slot_of(k) == slot}
            for name, g in self.groups.items()
        }

    def import_messages(self, messages: Sequence[Stored]) -> None:
        for stored in messages:
            if stored.offset >= self.next_offset.get(stored.slot, 0):
                self._store(stored)

    def import_group_state(self, state: dict[str, dict[str, int]]) -> None:
        for name, acked in state.items():
            group = self._group(name)
            for key, offset in acked.items():
                group.acked[key] = max(group.acked.get(key, -1), offset)
                queue = group.pending.get(key, deque())
                while queue and queue[0].offset <= offset:
                    queue.popleft()

    def release(self, slot: int) -> None:
        self.logs.pop(slot, None)
        for group in self.groups.values():
            for key in [k for k, q in group.pending.items() if q and q[0].slot == slot]:
                del group.pending[key]
                group.ready.pop(key, None)
                group.parked.discard(key)


class TwinNetwork:
    """A set of twin brokers addressed by endpoint (``twin://<shard>``)."""

    def __init__(self, shards: Sequence[str], slot_count: int = 1024, key_window: int = 1) -> None:
        loop_time = asyncio.get_running_loop().time
        endpoints = {shard: f"twin://{shard}" for shard in shards}
        slots = tuple(shards[i % len(shards)] for i in range(slot_count))
        table = RoutingTable(epoch=1, slots=slots, endpoints=endpoints)
        self.brokers = {endpoints[s]: TwinBroker(s, table, loop_time, key_window) for s in shards}

    @property
    def endpoints(self) -> list[str]:
        return sorted(self.brokers)

    def broker(self, endpoint: str) -> TwinBroker:
        try:
            return self.brokers[endpoint]
        except KeyError:
            raise TransportError(f"no broker at {endpoint}") from None


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

    def slot_of(self, key: str, slot_count: int) -> int:
        return fnv1a_slot(key, slot_count)

    async def routing(self, endpoint: str) -> RoutingTable:
        await self._hop("routing")
        table = self.network.broker(endpoint).table
        await self._hop("routing-reply")
        return table

    async def publish(
        self, endpoint: str, producer_id: str, messages: Sequence[OutboundMessage]
    ) -> list[PublishOutcome]:
        await self._hop("publish")
        outcomes = self.network.broker(endpoint).publish(producer_id, messages)
        await self._hop("publish-reply")
        if self.lose_publish_replies > 0:
            self.lose_publish_replies -= 1
            raise TransportError("reply lost (injected)")
        return outcomes

    async def fetch(self, endpoint: str, request: FetchRequest) -> list[Delivery]:
        await self._hop("fetch")
        broker = self.network.broker(endpoint)
        deadline = asyncio.get_running_loop().time() + request.wait_s
        out = broker.fetch(request)
        while not out and (remaining := deadline - asyncio.get_running_loop().time()) > 0:
            changed = broker.changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                break
            out = broker.fetch(request)
        await self._hop("fetch-reply")
        return out

    async def ack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None:
        await self._hop("ack")
        self.network.broker(endpoint).ack(group, receipts)
        await self._hop("ack-reply")

    async def nack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None:
        await self._hop("nack")
        self.network.broker(endpoint).ack(group, receipts, negative=True)
        await self._hop("nack-reply")

    async def backlog(self, endpoint: str) -> int:
        await self._hop("backlog")
        return self.network.broker(endpoint).backlog()

    async def close(self) -> None:
        return None

    # --- admin -------------------------------------------------------------------------------
    async def pause(self, endpoint: str, slot: int) -> None:
        await self._hop("pause")
        self.network.broker(endpoint).paused.add(slot)

    async def resume(self, endpoint: str, slot: int) -> None:
        await self._hop("resume")
        self.network.broker(endpoint).resume(slot)

    async def inflight(self, endpoint: str, slot: int) -> int:
        await self._hop("inflight")
        return self.network.broker(endpoint).inflight(slot)

    async def copy_backlog(self, source: str, target: str, slot: int, from_offset: int) -> int:
        await self._hop("copy")
        log = self.network.broker(source).logs.get(slot, [])
        chunk = [s for s in log if s.offset >= from_offset]
        self.network.broker(target).import_messages(chunk)
        return chunk[-1].offset + 1 if chunk else from_offset

    async def copy_group_state(self, source: str, target: str, slot: int) -> None:
        await self._hop("copy-groups")
        state = self.network.broker(source).export_group_state(slot)
        self.network.broker(target).import_group_state(state)

    async def update_routing(self, endpoint: str, table: RoutingTable) -> None:
        await self._hop("update-routing")
        self.network.broker(endpoint).set_table(table)

    async def release(self, endpoint: str, slot: int) -> None:
        await self._hop("release")
        self.network.broker(endpoint).release(slot)
