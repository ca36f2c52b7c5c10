"""The consumer's keyed buffer: held messages, handed out one per key at a time.

Kept apart from the consumer so its bookkeeping (held messages and bytes, the bound's evidence) is
easy to read and to test.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foreshard_broker.client.consumer import Message


class KeyedBuffer:
    """Held messages, handed out one per key at a time, in arrival order across keys."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Message]] = {}
        self._ready: deque[str] = deque()
        self._checked_out: set[str] = set()
        self.held_messages = 0
        self.held_bytes = 0
        self.peak_bytes = 0
        self.peak_messages = 0

    @staticmethod
    def slot_key(message: Message) -> str:
        key = message.delivery.key
        # Keyless messages are independent of each other: each gets a key of its own.
        return f"\0{message.endpoint}/{message.delivery.receipt}" if key is None else key

    def put(self, message: Message) -> None:
        key = self.slot_key(message)
        queue = self._queues.setdefault(key, deque())
        queue.append(message)
        if len(queue) == 1 and key not in self._checked_out:
            self._ready.append(key)
        self.held_messages += 1
        self.held_bytes += message.delivery.size
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        self.peak_messages = max(self.peak_messages, self.held_messages)

    def take(self) -> Message | None:
        if not self._ready:
            return None
        key = self._ready.popleft()
        queue = self._queues[key]
        message = queue.popleft()
        if not queue:
            del self._queues[key]
        self._checked_out.add(key)
        return message

    def release(self, message: Message) -> None:
        key = self.slot_key(message)
        self._checked_out.discard(key)
        self.held_messages -= 1
        self.held_bytes -= message.delivery.size
        if key in self._queues:
            self._ready.append(key)

    def drain(self) -> list[Message]:
        """Remove every message not checked out (to hand them back to the brokers)."""
        out = [m for queue in self._queues.values() for m in queue]
        self._queues.clear()
        self._ready.clear()
        for message in out:
            self.held_messages -= 1
            self.held_bytes -= message.delivery.size
        return out
