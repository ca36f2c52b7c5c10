"""In-memory storage: the twin of the segment log for unit tests (durable for the object's life)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from foreshard_broker.storage.base import CheckpointRecord, Record, StorageError


class MemoryStorage:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self._closed = False
        self.checkpoint: Callable[[], CheckpointRecord] | None = None
        self.on_failure: Callable[[str], None] = lambda reason: None  # memory never fails

    def replay(self) -> Iterator[Record]:
        self._closed = False  # a broker restarted over the same object reopens it
        yield from list(self.records)

    def append(self, record: Record) -> asyncio.Future[None]:
        if self._closed:
            raise StorageError("storage is closed")
        self.records.append(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def barrier(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True

    def compact(self, lowest_retained_offset: int) -> int:
        return 0  # nothing to free: the records live as long as the object
