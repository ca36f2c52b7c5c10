"""Import marks: per (source shard, slot or pinned key), the highest source offset imported here.

An exact (source shard, source offset) index cannot make imports idempotent on its own: once the
imported messages are consumed, compaction prunes it to retained messages, and a move re-run then
imported consumed messages again (duplicates, out of order). Exports run in offset order per
selection, so a high-water mark per selected item is enough and stays small (one entry per item
ever moved here). The item is the pinned key when the export selected it by key, else its slot:
a key moved on its own and its slot moved later are different streams of offsets.

Marks are forgotten when the copy they describe goes away (Discard after a rollback, Release after
the selection moved on), so a later move of the same item copies it from scratch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from foreshard_broker.server.files import read_json, write_json
from foreshard_broker.storage import Message


def item_of(message: Message, keys: frozenset[str]) -> str:
    return f"key/{message.key}" if message.key in keys else f"slot/{message.slot}"


class ImportMarks:
    def __init__(self, path: Path | None, durable: bool) -> None:
        self.path = path
        self.durable = durable
        self.high: dict[tuple[int, str], int] = {}
        self._lock = asyncio.Lock()
        self._dirty = False

    def load(self) -> None:
        raw = read_json(self.path) or {"marks": []}
        self.high = {(shard, item): offset for shard, item, offset in raw["marks"]}

    def seen(self, source: int, item: str, origin_offset: int) -> bool:
        return origin_offset <= self.high.get((source, item), -1)

    def advance(self, source: int, item: str, origin_offset: int) -> None:
        if origin_offset > self.high.get((source, item), -1):
            self.high[(source, item)] = origin_offset
            self._dirty = True

    def forget(self, slots: Iterable[int], keys: Iterable[str]) -> None:
        items = {*(f"slot/{slot}" for slot in slots), *(f"key/{key}" for key in keys)}
        gone = [mark for mark in self.high if mark[1] in items]
        for mark in gone:
            del self.high[mark]
        self._dirty = self._dirty or bool(gone)

    async def persist(self) -> None:
        """Write the marks if they changed (after the imported records are durable in the log)."""
        if self.path is None or not self._dirty:
            return
        async with self._lock:
            self._dirty = False
            body = {"marks": [[shard, item, offset] for (shard, item), offset in sorted(self.high.items())]}
            await asyncio.to_thread(write_json, self.path, body, self.durable)
