"""Durable segment log with group commit.

Records are framed (length + CRC32) and appended to numbered segment files. A single flusher task
writes whatever accumulated while the previous fsync ran, then fsyncs once for all of it (group
commit): under load many batches share one fsync, and an idle broker syncs a lone batch at once, so
an acknowledged publish is on disk within one fsync time plus at most `linger` seconds.

Sync modes:
  group   one fsync per flush covering every record appended meanwhile (default)
  always  one write + fsync per appended record, never shared between records
  none    write to the OS page cache only (tests; survives a process crash, not a power loss)

Recovery: segments are read in order; a torn or corrupt tail of the LAST segment (a crash during a
write) is truncated; damage anywhere else is a StorageError, because silently skipping it would
lose acknowledged data.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from foreshard_broker.storage.base import Record, StorageError
from foreshard_broker.storage.codec import frame, read_frames

SyncMode = Literal["group", "always", "none"]
SUFFIX = ".seg"


class SegmentLogStorage:
    def __init__(
        self,
        directory: Path,
        sync: SyncMode = "group",
        segment_bytes: int = 64 << 20,
        linger: float = 0.0,
    ) -> None:
        self.directory = directory
        self.sync = sync
        self.segment_bytes = segment_bytes
        self.linger = linger
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._fd = -1
        self._size = 0
        self._index = 0
        self._failure: BaseException | None = None
        self._closing = False
        self._busy = False  # a flush is running in a worker thread

    # ------------------------------------------------------------------ recovery
    def replay(self) -> Iterator[Record]:
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = sorted(self.directory.glob("*" + SUFFIX))
        for number, path in enumerate(segments):
            yield from self._replay_segment(path, last=number == len(segments) - 1)
        self._index = int(segments[-1].stem) if segments else 0
        if not segments:
            self._open_segment(1)
        else:
            self._fd = os.open(segments[-1], os.O_WRONLY | os.O_APPEND)
            self._size = segments[-1].stat().st_size

    def _replay_segment(self, path: Path, last: bool) -> Iterator[Record]:
        data = path.read_bytes()
        good = 0
        for good, record in read_frames(data):  # noqa: B007 - `good` is read after the loop
            yield record
        if good != len(data):
            if not last:
                raise StorageError(f"segment {path.name} is corrupt at byte {good}; refusing to skip data")
            with open(path, "r+b") as torn:
                torn.truncate(good)
                os.fsync(torn.fileno())

    def _open_segment(self, index: int) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        self._index = index
        path = self.directory / f"{index:08d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = 0
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's directory entry must survive a crash too
        finally:
            os.close(dir_fd)

    # ------------------------------------------------------------------ appends
    def append(self, record: Record) -> asyncio.Future[None]:
        if self._failure is not None:
            raise StorageError(f"log write failed earlier: {self._failure}")
        if self._closing:
            raise StorageError("storage is closing")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.sync == "always" and not self._pending and not self._busy:
            # Nothing queued: write and fsync right here. Blocking the loop for one fsync is what
            # this mode asks for, and it saves a thread hand-off on every publish.
            self._write_now(frame(record), done)
            return done
        self._pending.append((frame(record), done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="segment-log-flusher")
        self._wakeup.set()
        return done

    async def barrier(self) -> None:
        if self._pending or self._flusher is not None:
            await self.append_marker()

    async def append_marker(self) -> None:
        """Wait for everything queued so far: an empty future queued behind them."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((b"", done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="segment-log-flusher")
        self._wakeup.set()
        await done

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.linger and not self._closing:
                await asyncio.sleep(self.linger)
            batch, self._pending = self._pending, []
            if batch:
                await self._flush(batch)
            if self._closing and not self._pending:
                return

    def _write_now(self, data: bytes, done: asyncio.Future[None]) -> None:
        try:
            self._write([data], True)
        except OSError as error:
            self._failure = error
            raise StorageError(f"log write failed: {error}") from error
        done.set_result(None)

    async def _flush(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        self._busy = True
        try:
            await self._flush_batch(batch)
        finally:
            self._busy = False

    async def _flush_batch(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        try:
            if self.sync == "always":
                for data, done in batch:
                    await asyncio.to_thread(self._write, [data], True)
                    _resolve(done)
                return
            await asyncio.to_thread(self._write, [data for data, _ in batch], self.sync == "group")
        except OSError as error:  # a failed fsync cannot be retried safely: fail everything after it
            self._failure = error
            for _, done in batch:
                if not done.done():
                    done.set_exception(StorageError(f"log write failed: {error}"))
            return
        for _, done in batch:
            _resolve(done)

    def _write(self, chunks: list[bytes], sync: bool) -> None:
        data = b"".join(chunks)
        if data:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._size += len(data)
        if sync and data:
            os.fdatasync(self._fd)
        if self._size >= self.segment_bytes:
            self._open_segment(self._index + 1)

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._flusher is not None:
            await self._flusher
            self._flusher = None
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
