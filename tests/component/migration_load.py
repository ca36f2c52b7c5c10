"""Shared by the migration component tests: numbered load per key, its checker, fixed ports."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict
from dataclasses import dataclass, field

from foreshard_broker.client.consumer import Message
from foreshard_broker.client.producer import Producer
from foreshard_broker.client.transport import slot_of

SLOTS = 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Load:
    """Numbered messages per key, and what the group received, per key."""

    keys: list[str]
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def produce(self, producer: Producer) -> None:
        """Pipelined (the producer keeps each key's order), at most 4000 messages unanswered."""
        pending: list[asyncio.Future[None]] = []
        while not self.stop.is_set():
            for key in self.keys:
                pending.append(producer.send(key, str(self.sent[key]).encode()))
                self.sent[key] += 1
            if len(pending) >= 4000:
                await asyncio.gather(*pending[:2000])
                del pending[:2000]
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)

    async def handle(self, message: Message) -> None:
        assert message.key is not None
        self.received[message.key].append(int(message.payload))

    def complete(self) -> bool:
        """Every key's messages arrived at least once (repeats do not count twice)."""
        return all(len(set(self.received[key])) >= self.sent[key] for key in self.keys)

    def check(self) -> tuple[dict[str, list[int]], int]:
        """Keys whose sequence is wrong, and how many immediate repeats (lost acks) were seen."""
        wrong, repeats = {}, 0
        for key in self.keys:
            collapsed = [
                n for i, n in enumerate(self.received[key]) if i == 0 or n != self.received[key][i - 1]
            ]
            repeats += len(self.received[key]) - len(collapsed)
            if collapsed != list(range(self.sent[key])):
                wrong[key] = collapsed
        return wrong, repeats


def keys_for(slot: int) -> list[str]:
    inside = [k for k in (f"key-{n}" for n in range(50_000)) if slot_of(k, SLOTS) == slot][:8]
    return inside + [f"other-{n}" for n in range(40)]
