"""Durable segment log with group commit and prefix compaction.

Records are framed (length + CRC32) and appended to numbered segment files. A single flusher task
writes whatever accumulated while the previous fsync ran, then fsyncs once for all of it (group
commit): under load many batches share one fsync, and an idle broker syncs a lone batch at once, so
an acknowledged publish is on disk within one fsync time plus at most `linger` seconds.

Sync modes:
  group   one fdatasync per flush covering every record appended meanwhile (default)
  always  one write + fdatasync per appended record, never shared between records
  none    write to the OS page cache only (tests; survives a process crash, not a power loss)

Segments and compaction: the event loop decides where a segment ends and starts every new segment
with a CheckpointRecord from `checkpoint` (groups, producer sequences, next offset). Once every
message of a prefix of segments has been acknowledged, `compact` deletes that prefix; replay then
starts at a checkpoint and loses nothing that is still needed.

Recovery: segments are read in order; a torn tail of the LAST segment (a crash during a write: a
frame cut short, or a zero-filled tail) is truncated and logged; a complete frame with a bad CRC
followed by more data in the last segment is damage, not a torn write: it is truncated too (the
broker cannot start otherwise) but logged at error and counted in `recovery`, which /metrics
exports. Damage in any other segment is a StorageError, because silently skipping it would lose
acknowledged data.

Failures: a write or fsync error (EIO, ENOSPC) in any sync mode fails the record's future and
every later append and barrier (a failed fsync cannot be retried safely: the kernel may already
have dropped the dirty pages), and calls `on_failure` once, so the broker stops accepting writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from foreshard_broker.storage.base import BatchRecord, CheckpointRecord, Record, StorageError
from foreshard_broker.storage.codec import FRAME, frame, read_frames
from foreshard_broker.storage.fileops import FileOps

log = logging.getLogger("foreshard_broker.storage")

SyncMode = Literal["group", "always", "none"]
SUFFIX = ".seg"
Frame = list[bytes]  # one record's buffers, written in order (see codec.frame)
ROTATE: Frame = [b"<rotate>"]  # sentinel, compared by identity: the next segment starts here
Pending = tuple[Frame, asyncio.Future[None] | None]
IOV_MAX = 1024  # buffers per writev call (the Linux limit)


@dataclass
class Recovery:
    """What replay found wrong in the last segment (exported as metrics)."""

    torn_tails: int = 0  # tails cut short by a crash, truncated (expected after a crash)
    damaged: int = 0  # complete frames with a bad checksum followed by more data (not a torn write)
    truncated_bytes: int = 0


class SegmentLogStorage:
    def __init__(
        self,
        directory: Path,
        sync: SyncMode = "group",
        segment_bytes: int = 64 << 20,
        linger: float = 0.0,
        ops: FileOps | None = None,
    ) -> None:
        self.directory = directory
        self.ops = ops or FileOps()
        self.recovery = Recovery()
        self.on_failure: Callable[[str], None] = lambda reason: None
        self.sync = sync
        self.segment_bytes = segment_bytes
        self.linger = linger
        self.checkpoint: Callable[[], CheckpointRecord] | None = None
        self._pending: list[Pending] = []
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._fd = -1
        self._index = 0  # segment the writer appends to
        self._failure: BaseException | None = None
        self._closing = False
        self._busy = False  # a flush is running in a worker thread
        # Loop-side view: where segments end, and the highest message offset each one holds.
        self._loop_index = 0
        self._loop_size = 0
        self._max_offset: dict[int, int] = {}
        # Segments that start with a checkpoint: replay may start there (compaction's condition).
        self._has_checkpoint: dict[int, bool] = {}

    # ------------------------------------------------------------------ recovery
    def replay(self) -> Iterator[Record]:
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = sorted(self.directory.glob("*" + SUFFIX))
        for number, path in enumerate(segments):
            index = int(path.stem)
            self._max_offset[index] = -1
            self._has_checkpoint[index] = False
            for position, record in enumerate(self._replay_segment(path, last=number == len(segments) - 1)):
                if position == 0 and isinstance(record, CheckpointRecord):
                    self._has_checkpoint[index] = True
                self._track(index, record)
                yield record
        if not segments:
            self._index = 1
            self._open(1)
        else:
            self._index = int(segments[-1].stem)
            self._fd = self.ops.open(segments[-1], os.O_WRONLY | os.O_APPEND)
        self._loop_index = self._index
        self._loop_size = self.ops.size(self._fd)
        self._max_offset.setdefault(self._index, -1)
        self._has_checkpoint.setdefault(self._index, False)

    def _replay_segment(self, path: Path, last: bool) -> Iterator[Record]:
        data = self.ops.read(path)
        good = 0
        for good, record in read_frames(data):  # noqa: B007 - `good` is read after the loop
            yield record
        if good == len(data):
            return
        if not last:
            raise StorageError(f"segment {path.name} is corrupt at byte {good}; refusing to skip data")
        self._note_bad_tail(path, data, good)
        self.ops.truncate(path, good)

    def _note_bad_tail(self, path: Path, data: bytes, good: int) -> None:
        cut = len(data) - good
        self.recovery.truncated_bytes += cut
        where = {"segment": path.name, "at_byte": good, "truncated_bytes": cut}
        if _torn(data, good):
            self.recovery.torn_tails += 1
            log.warning("truncated a torn tail of the last segment (a crash during a write)", extra=where)
            return
        self.recovery.damaged += 1
        log.error(
            "the last segment is damaged mid-file: a complete record has a bad checksum and more data "
            "follows; truncated there, so records after it are gone (check the disk)",
            extra=where,
        )

    def _track(self, index: int, record: Record) -> None:
        if isinstance(record, BatchRecord) and len(record.chunk):
            last = record.chunk.first + len(record.chunk) - 1
            self._max_offset[index] = max(self._max_offset.get(index, -1), last)

    def _open(self, index: int) -> None:
        """Writer side: close the current segment (synced) and create the next one.

        With sync "none" nothing is synced here either: fsyncing a whole segment of page-cache
        writes would stall the writer for tens of milliseconds at every rotation, for a durability
        that mode does not promise.
        """
        durable = self.sync != "none"
        if self._fd >= 0:
            if durable:
                self.ops.fsync(self._fd)
            self.ops.close(self._fd)
            self._fd = -1
        self._index = index
        path = self.directory / f"{index:08d}{SUFFIX}"
        self._fd = self.ops.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if durable:
            self.ops.sync_directory(self.directory)  # the new file's name must survive a crash too

    # ------------------------------------------------------------------ appends
    def append(self, record: Record) -> asyncio.Future[None]:
        if self._failure is not None:
            raise StorageError(f"the log failed earlier ({self._failure}); nothing more is written")
        if self._closing:
            raise StorageError("storage is closing")
        data = frame(record)
        size = sum(map(len, data))
        if self._loop_size and self._loop_size + size > self.segment_bytes:
            self._rotate()
        self._loop_size += size
        self._track(self._loop_index, record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.sync != "group" and not self._pending and not self._busy:
            # Nothing queued: write (and with "always", fsync) right here. Blocking the loop for
            # one fsync is what "always" asks for; "none" only copies into the page cache. Either
            # way it saves a thread hand-off, which on a busy machine waits for a CPU.
            self._write_now([data], done)
            return done
        self._enqueue(data, done)
        return done

    def _rotate(self) -> None:
        """Loop side: the next segment starts here, with a checkpoint as its first record."""
        self._loop_index += 1
        self._max_offset[self._loop_index] = -1
        self._loop_size = 0
        self._enqueue(ROTATE, None)
        self._has_checkpoint[self._loop_index] = self.checkpoint is not None
        if self.checkpoint is not None:
            data = frame(self.checkpoint())
            self._loop_size += sum(map(len, data))
            self._enqueue(data, None)

    def _enqueue(self, data: Frame, done: asyncio.Future[None] | None) -> None:
        self._pending.append((data, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="segment-log-flusher")
        self._wakeup.set()

    async def barrier(self) -> None:
        if self._pending or self._busy:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._enqueue([], done)  # an empty frame queued behind everything before it
            await done
        if self._failure is not None:  # an empty frame "succeeds" only if nothing failed before it
            raise StorageError(f"the log failed ({self._failure})")

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.linger and not self._closing:
                await asyncio.sleep(self.linger)
            batch, self._pending = self._pending, []
            if batch:
                self._busy = True
                try:
                    await self._flush(batch)
                finally:
                    self._busy = False
            if self._closing and not self._pending:
                return

    async def _flush(self, batch: list[Pending]) -> None:
        if self._failure is not None:
            self._fail(batch, self._failure)
            return
        try:
            if self.sync == "always":
                for data, done in batch:
                    await asyncio.to_thread(self._write, [data], True)
                    _resolve(done)
                return
            await asyncio.to_thread(self._write, [data for data, _ in batch], self.sync == "group")
        except OSError as error:  # a failed fsync cannot be retried safely: fail everything after it
            self._failed(error)
            self._fail(batch, error)
            return
        for _, done in batch:
            _resolve(done)

    def _write_now(self, chunks: list[Frame], done: asyncio.Future[None]) -> None:
        try:
            self._write(chunks, self.sync == "always")
        except OSError as error:
            self._failed(error)
            done.set_exception(StorageError(f"log write failed: {error}"))
            return
        done.set_result(None)

    def _failed(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
            log.error("log write failed; refusing every later write", extra={"error": str(error)})
            self.on_failure(f"log write failed: {error}")

    @staticmethod
    def _fail(batch: list[Pending], error: BaseException) -> None:
        for _, done in batch:
            if done is not None and not done.done():
                done.set_exception(StorageError(f"log write failed: {error}"))

    def _write(self, chunks: list[Frame], sync: bool) -> None:
        """Writer side (worker thread or inline): write the frames, rotating at ROTATE markers."""
        run: list[bytes] = []
        for chunk in chunks:
            if chunk is ROTATE:
                self._write_run(run, sync)
                run = []
                self._open(self._index + 1)
            else:
                run += chunk
        self._write_run(run, sync)

    def _write_run(self, run: list[bytes], sync: bool) -> None:
        if not run:
            return
        for start in range(0, len(run), IOV_MAX):
            buffers = run[start : start + IOV_MAX]
            written = self.ops.writev(self._fd, buffers)
            if written < sum(map(len, buffers)):  # short write (rare): finish it byte by byte
                view = memoryview(b"".join(buffers))[written:]
                while view:
                    view = view[self.ops.write(self._fd, view) :]
        if sync:
            self.ops.fdatasync(self._fd)

    # ------------------------------------------------------------------ compaction
    def compact(self, lowest_retained_offset: int) -> int:
        """Delete the longest prefix of closed segments whose messages are all below the offset.

        Replay must then start at a checkpoint, so the prefix ends just before a segment that
        starts with one (a crash between creating a segment and writing its checkpoint leaves one
        without: the prefix before it stays until it can go too). Runs on the loop; the writer
        never touches closed segments.
        """
        if self.checkpoint is None:
            return 0  # without checkpoints the prefix holds state that replay still needs
        active = min(self._loop_index, self._index)
        indices = sorted(self._max_offset)
        end = 0
        while (
            end < len(indices)
            and indices[end] < active
            and self._max_offset[indices[end]] < lowest_retained_offset
        ):
            end += 1
        while end and not self._has_checkpoint.get(indices[end], False):
            end -= 1  # indices[end] exists: the active segment is never in the prefix
        freed = 0
        for index in indices[:end]:
            path = self.directory / f"{index:08d}{SUFFIX}"
            freed += path.stat().st_size if path.exists() else 0
            self.ops.unlink(path)
            del self._max_offset[index]
            self._has_checkpoint.pop(index, None)
        if end and self.sync != "none":
            self.ops.sync_directory(self.directory)  # a deleted prefix must not come back
        return freed

    async def abandon(self) -> None:
        """Stop as a crash would: no flush, no fsync (tests simulate a dead process with it)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._flusher is not None:
            await self._flusher
            self._flusher = None
        if self._fd >= 0:
            if self._failure is None:
                self.ops.fsync(self._fd)
            self.ops.close(self._fd)
            self._fd = -1


def _torn(data: bytes, good: int) -> bool:
    """A crash artefact rather than damage: the tail is zeros, or its frame runs past the end."""
    tail = data[good:]
    if len(tail) < FRAME.size or not tail.strip(b"\x00"):
        return True
    length: int = FRAME.unpack_from(tail)[0]
    return FRAME.size + length > len(tail)


def _resolve(done: asyncio.Future[None] | None) -> None:
    if done is not None and not done.done():
        done.set_result(None)
