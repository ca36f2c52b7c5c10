"""One consumer group's delivery state: strict per-key order with at most one delivery in flight per key.

pending[key]   deque of the key's unacknowledged offsets, oldest first; only the head is ever
               delivered, so a key's next message waits until the head is acked
ready          keys whose head may be delivered now (a key appears at most once while valid)
parked         keys whose head is fenced (slot paused or not owned); `unpark` requeues them
keyless        unordered messages, each deliverable on its own
inflight       offset -> delivery awaiting an ack; on deadline or nack the message returns to
               the front, so a redelivery keeps the key's order
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable

from foreshard_broker.storage import Message


class Delivery:
    __slots__ = ("attempt", "consumer", "deadline", "message")

    def __init__(self, message: Message, consumer: str, deadline: float, attempt: int) -> None:
        self.message, self.consumer, self.deadline, self.attempt = message, consumer, deadline, attempt


class ConsumerGroup:
    """Holds offsets, not messages: `lookup` (the broker state) turns an offset into its message
    when a delivery starts, so a backlog costs the group an int per message and nothing to scan."""

    def __init__(self, name: str, from_offset: int, lookup: Callable[[int], Message]) -> None:
        self.name = name
        self.from_offset = from_offset
        self.lookup = lookup
        self.pending: dict[str, deque[int]] = {}
        self.ready: deque[str] = deque()
        self.parked: set[str] = set()
        self.keyless: dict[int, None] = {}  # insertion-ordered sets of offsets
        self.keyless_parked: dict[int, None] = {}
        self.inflight: dict[int, Delivery] = {}
        self.attempts: dict[int, int] = {}
        self._deadlines: list[tuple[float, int]] = []
        self.backlog = 0

    def add(self, offset: int, key: str) -> None:
        self.backlog += 1
        if not key:
            self.keyless[offset] = None
            return
        queue = self.pending.get(key)
        if queue is None:
            self.pending[key] = deque((offset,))
            self.ready.append(key)
        else:
            queue.append(offset)

    def add_run(self, first: int, keys: list[str]) -> None:
        """`add` for consecutive offsets `first`, `first + 1`, ... with these keys (one batch)."""
        self.backlog += len(keys)
        pending, ready = self.pending, self.ready
        for offset, key in enumerate(keys, first):
            if not key:
                self.keyless[offset] = None
                continue
            queue = pending.get(key)
            if queue is None:
                pending[key] = deque((offset,))
                ready.append(key)
            else:
                queue.append(offset)

    def take(
        self,
        limit: int,
        max_bytes: int,
        consumer: str,
        deadline: float,
        deliverable: Callable[[Message], bool],
    ) -> list[Delivery]:
        """Start deliveries: heads of ready keys, then keyless messages, within the limits."""
        out: list[Delivery] = []
        budget = max_bytes
        while self.ready and len(out) < limit:
            key = self.ready.popleft()
            queue = self.pending.get(key)
            if not queue or queue[0] in self.inflight:
                continue  # released, or a stale duplicate entry
            head = self.lookup(queue[0])
            if not deliverable(head):
                self.parked.add(key)
                continue
            if len(head.payload) > budget and out:
                self.ready.appendleft(key)
                return out
            budget -= len(head.payload)
            out.append(self._start(head, consumer, deadline))
        while self.keyless and len(out) < limit:
            offset = next(iter(self.keyless))
            message = self.lookup(offset)
            if len(message.payload) > budget and out:
                break
            del self.keyless[offset]
            if not deliverable(message):
                self.keyless_parked[offset] = None
                continue
            budget -= len(message.payload)
            out.append(self._start(message, consumer, deadline))
        return out

    def _start(self, message: Message, consumer: str, deadline: float) -> Delivery:
        attempt = self.attempts.get(message.offset, 0) + 1
        self.attempts[message.offset] = attempt
        delivery = Delivery(message, consumer, deadline, attempt)
        self.inflight[message.offset] = delivery
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self.inflight) + 1024:
            # Acked deliveries leave their entry behind until its deadline passes: with a 30 s ack
            # deadline and fast acks that is every delivery of the last 30 s (~100 MB at 30k/s).
            # Rebuilding from what is in flight keeps the heap O(in flight), amortised O(1).
            deadlines[:] = [(d.deadline, offset) for offset, d in self.inflight.items()]
            heapq.heapify(deadlines)
        else:
            heapq.heappush(deadlines, (deadline, message.offset))
        return delivery

    def ack(self, offset: int) -> Message | None:
        """Finish a delivery; returns the acknowledged message, or None if it was not in flight."""
        delivery = self.inflight.pop(offset, None)
        if delivery is None:
            return None
        self._forget(offset, delivery.message.key)
        return delivery.message

    def _forget(self, offset: int, key: str) -> None:
        self.backlog -= 1
        self.attempts.pop(offset, None)
        if not key:
            return
        queue = self.pending[key]
        queue.popleft()
        if queue:
            self.ready.append(key)
        else:
            del self.pending[key]

    def nack(self, offset: int) -> bool:
        """Return an in-flight message to the front so it is redelivered first (order kept)."""
        delivery = self.inflight.pop(offset, None)
        if delivery is None:
            return False
        key = delivery.message.key
        if key:
            self.ready.appendleft(key)
        else:
            self.keyless[offset] = None
        return True

    def expire(self, now: float) -> int:
        """Redeliver every delivery whose ack deadline passed; returns how many."""
        expired = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, offset = heapq.heappop(self._deadlines)
            delivery = self.inflight.get(offset)
            if delivery is not None and delivery.deadline == deadline:
                expired += self.nack(offset)
        return expired

    def next_deadline(self) -> float | None:
        while self._deadlines:
            deadline, offset = self._deadlines[0]
            delivery = self.inflight.get(offset)
            if delivery is not None and delivery.deadline == deadline:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    def unpark(self) -> bool:
        """Requeue fenced keys; `take` parks them again if they are still fenced."""
        woke = bool(self.parked or self.keyless_parked)
        self.ready.extend(self.parked)
        self.parked.clear()
        self.keyless.update(self.keyless_parked)
        self.keyless_parked.clear()
        return woke

    def discard(self, offset: int, key: str) -> bool:
        """Remove an unacknowledged message wherever it is (replayed acks, releases, imported acks)."""
        if self.inflight.pop(offset, None) is None and not self._queued(offset, key):
            return False
        if not key:
            self.keyless.pop(offset, None)
            self.keyless_parked.pop(offset, None)
            self.backlog -= 1
            self.attempts.pop(offset, None)
            return True
        queue = self.pending[key]
        if queue[0] != offset:
            queue.remove(offset)  # only after out-of-order acks in old logs; heads are the norm
            queue.appendleft(offset)
        self._forget(offset, key)
        return True

    def _queued(self, offset: int, key: str) -> bool:
        if not key:
            return offset in self.keyless or offset in self.keyless_parked
        queue = self.pending.get(key)
        if not queue:
            return False
        return queue[0] == offset or offset in queue

    def unacked(self, matches: Callable[[Message], bool]) -> Iterable[Message]:
        """Unacknowledged messages (in-flight included) that match, per key oldest first."""
        lookup = self.lookup
        for queue in self.pending.values():
            # A key's messages share their key and slot: the head decides for the whole queue.
            if queue and matches(lookup(queue[0])):
                yield from map(lookup, queue)
        for offset in (*self.keyless, *self.keyless_parked):
            message = lookup(offset)
            if matches(message):
                yield message
        for delivery in self.inflight.values():
            if not delivery.message.key and matches(delivery.message):
                yield delivery.message
