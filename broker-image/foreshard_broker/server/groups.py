"""One consumer group's delivery state: strict per-key order with at most one delivery in flight per key.

pending[key]   deque of the key's unacknowledged messages, oldest first; only the head is ever
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
    def __init__(self, name: str, from_offset: int) -> None:
        self.name = name
        self.from_offset = from_offset
        self.pending: dict[str, deque[Message]] = {}
        self.ready: deque[str] = deque()
        self.parked: set[str] = set()
        self.keyless: dict[int, Message] = {}
        self.keyless_parked: dict[int, Message] = {}
        self.inflight: dict[int, Delivery] = {}
        self.attempts: dict[int, int] = {}
        self._deadlines: list[tuple[float, int]] = []
        self.backlog = 0

    def add(self, message: Message) -> None:
        self.backlog += 1
        key = message.key
        if not key:
            self.keyless[message.offset] = message
            return
        queue = self.pending.get(key)
        if queue is None:
            self.pending[key] = deque((message,))
            self.ready.append(key)
        else:
            queue.append(message)

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
            if not queue or queue[0].offset in self.inflight:
                continue  # released, or a stale duplicate entry
            head = queue[0]
            if not deliverable(head):
                self.parked.add(key)
                continue
            if len(head.payload) > budget and out:
                self.ready.appendleft(key)
                return out
            budget -= len(head.payload)
            out.append(self._start(head, consumer, deadline))
        while self.keyless and len(out) < limit:
            offset, message = next(iter(self.keyless.items()))
            if len(message.payload) > budget and out:
                break
            del self.keyless[offset]
            if not deliverable(message):
                self.keyless_parked[offset] = message
                continue
            budget -= len(message.payload)
            out.append(self._start(message, consumer, deadline))
        return out

    def _start(self, message: Message, consumer: str, deadline: float) -> Delivery:
        attempt = self.attempts.get(message.offset, 0) + 1
        self.attempts[message.offset] = attempt
        delivery = Delivery(message, consumer, deadline, attempt)
        self.inflight[message.offset] = delivery
        heapq.heappush(self._deadlines, (deadline, message.offset))
        return delivery

    def ack(self, offset: int) -> Message | None:
        """Finish a delivery; returns the acknowledged message, or None if it was not in flight."""
        delivery = self.inflight.pop(offset, None)
        if delivery is None:
            return None
        self._forget(delivery.message)
        return delivery.message

    def _forget(self, message: Message) -> None:
        self.backlog -= 1
        self.attempts.pop(message.offset, None)
        key = message.key
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
        message = delivery.message
        if message.key:
            self.ready.appendleft(message.key)
        else:
            self.keyless[offset] = message
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

    def discard(self, message: Message) -> bool:
        """Remove an unacknowledged message wherever it is (replayed acks, releases, imported acks)."""
        if self.inflight.pop(message.offset, None) is None and not self._queued(message):
            return False
        if not message.key:
            self.keyless.pop(message.offset, None)
            self.keyless_parked.pop(message.offset, None)
            self.backlog -= 1
            self.attempts.pop(message.offset, None)
            return True
        queue = self.pending[message.key]
        if queue[0] is not message:
            queue.remove(message)  # only after out-of-order acks in old logs; heads are the norm
            queue.appendleft(message)
        self._forget(message)
        return True

    def _queued(self, message: Message) -> bool:
        if not message.key:
            return message.offset in self.keyless or message.offset in self.keyless_parked
        queue = self.pending.get(message.key)
        if not queue:
            return False
        return queue[0] is message or message in queue

    def unacked(self, matches: Callable[[Message], bool]) -> Iterable[Message]:
        """Unacknowledged messages (in-flight included) that match, per key oldest first."""
        for queue in self.pending.values():
            if queue and matches(queue[0]):
                yield from queue
        for message in (*self.keyless.values(), *self.keyless_parked.values()):
            if matches(message):
                yield message
        for delivery in self.inflight.values():
            if not delivery.message.key and matches(delivery.message):
                yield delivery.message
