"""Fault injection for the segment log (tests only): power loss and I/O errors, at named calls.

`FaultyFileOps` is a `FileOps` that keeps what a disk would keep: per file, the length made
durable by the last fdatasync/fsync, and which names were created since their directory was last
synced. At a simulated power loss every byte written after that is at risk, in one of these forms:

  drop    the file ends at its durable length (the classic lost write-back cache)
  torn    some whole 4 KiB pages of the unsynced tail survived, the rest did not
  zeros   the file keeps its length but the unsynced tail reads back as zeros (metadata written,
          data not: what ext4 can show after a crash)
  process nothing is lost (a process crash: the page cache survives; what `sync=none` promises)

and a file whose name was never made durable by a directory sync disappears. It can also fail the
n-th `write`/`fdatasync`/`fsync` with EIO or ENOSPC, once (Linux may report a lost write-back only
once, so a later call "succeeding" proves nothing).

In a real broker process the model is kept in a journal file (`FORESHARD_BROKER_FAULTS`, JSON:
{"journal": path, "fail": {"op": ..., "errno": "EIO", "after": n}}); after a SIGKILL the test calls
`power_loss_from_journal` to cut the files as the disk would have.
"""

from __future__ import annotations

import errno as errnos
import json
import os
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from foreshard_broker.storage.fileops import FileOps

PAGE = 4096
VARIANTS = ("drop", "torn", "zeros", "process")
ENV = "FORESHARD_BROKER_FAULTS"


class PowerLost(OSError):
    """The simulated machine lost power: this call and every later one did not happen."""


@dataclass(frozen=True)
class Fault:
    op: str  # "write" (writev/write), "fdatasync" or "fsync"
    errno: int
    after: int = 0  # calls of `op` that succeed before the failing one


@dataclass(frozen=True)
class PowerLoss:
    """The power fails instead of the n-th call of `op` (counted from the moment the `after` call
    happened, e.g. ("fdatasync", 2, after=("fsync", 2)): the 2nd fdatasync after the 2nd rotation)."""

    op: str
    n: int
    after: tuple[str, int] | None = None


@dataclass
class FileState:
    data: bytes
    durable: int  # bytes made durable by an fdatasync/fsync
    name_durable: bool  # False: created after the last sync of its directory


class FaultyFileOps(FileOps):
    def __init__(
        self,
        fail: Fault | None = None,
        power_loss_at: PowerLoss | None = None,
        journal: Path | None = None,
    ) -> None:
        self.fail = fail
        self.power_loss_at = power_loss_at
        self._armed_at: int | None = None if power_loss_at and power_loss_at.after else 0
        self.journal = journal
        self.calls: Counter[str] = Counter()
        self.failed: list[str] = []  # the calls made to fail
        self.fds: dict[int, Path] = {}
        self.durable: dict[Path, int] = {}
        self.unsynced_names: set[Path] = set()
        self.image: dict[Path, FileState] | None = None  # the disk as the power went
        # Optional: the failing call waits for `gate` (after setting `reached`), so a test can
        # queue more work behind a write that is about to fail.
        self.gate: threading.Event | None = None
        self.reached = threading.Event()

    # ------------------------------------------------------------------ the model
    def _call(self, op: str) -> None:
        if self.image is not None:
            raise PowerLost(errnos.EIO, "power lost")
        self.calls[op] += 1
        point = self.power_loss_at
        if point is not None:
            if self._armed_at is None and point.after == (op, self.calls[op]):
                self._armed_at = self.calls[point.op] - (op == point.op)
            elif self._armed_at is not None and op == point.op and self.calls[op] - self._armed_at == point.n:
                self.image = self.snapshot()
                raise PowerLost(errnos.EIO, "power lost")
        fail = self.fail
        if fail is not None and fail.op == op and self.calls[op] == fail.after + 1:
            self.failed.append(f"{op} #{self.calls[op]}: {os.strerror(fail.errno)}")
            self.reached.set()
            if self.gate is not None:
                self.gate.wait()
            raise OSError(fail.errno, os.strerror(fail.errno))

    def _note(self, **entry: object) -> None:
        if self.journal is not None:
            with open(self.journal, "a") as handle:
                handle.write(json.dumps(entry) + "\n")

    def _synced(self, fd: int) -> None:
        path = self.fds[fd]
        self.durable[path] = os.fstat(fd).st_size
        self._note(path=str(path), durable=self.durable[path])

    def snapshot(self) -> dict[Path, FileState]:
        return {
            path: FileState(path.read_bytes(), self.durable.get(path, 0), path not in self.unsynced_names)
            for path in {*self.durable, *self.unsynced_names}
            if path.exists()
        }

    # ------------------------------------------------------------------ FileOps
    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        if self.image is not None:
            raise PowerLost(errnos.EIO, "power lost")
        created = bool(flags & os.O_CREAT) and not path.exists()
        fd = super().open(path, flags, mode)
        self.fds[fd] = path
        if created:
            self.unsynced_names.add(path)
            self._note(created=str(path))
        elif path not in self.durable and path not in self.unsynced_names:
            self.durable[path] = os.fstat(fd).st_size  # existed before the model started
            self._note(path=str(path), durable=self.durable[path])
        return fd

    def writev(self, fd: int, buffers: Sequence[bytes]) -> int:
        self._call("write")
        return super().writev(fd, buffers)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._call("write")
        return super().write(fd, data)

    def fdatasync(self, fd: int) -> None:
        self._call("fdatasync")
        super().fdatasync(fd)
        self._synced(fd)

    def fsync(self, fd: int) -> None:
        self._call("fsync")
        super().fsync(fd)
        self._synced(fd)

    def close(self, fd: int) -> None:
        self.fds.pop(fd, None)
        super().close(fd)

    def sync_directory(self, directory: Path) -> None:
        if self.image is not None:
            raise PowerLost(errnos.EIO, "power lost")
        super().sync_directory(directory)
        named = {path for path in self.unsynced_names if path.parent == directory}
        self.unsynced_names -= named
        for path in named:
            self.durable.setdefault(path, 0)  # the name is durable now; its data not yet
            self._note(named=str(path))

    def truncate(self, path: Path, size: int) -> None:
        super().truncate(path, size)
        self.durable[path] = size

    # ------------------------------------------------------------------ the power loss
    def restore(self, variant: str, rng: random.Random) -> dict[str, int]:
        """Write the disk as the power loss left it (the image taken then, or the files now)."""
        image = self.image if self.image is not None else self.snapshot()
        return apply_power_loss(image, variant, rng)


def apply_power_loss(image: dict[Path, FileState], variant: str, rng: random.Random) -> dict[str, int]:
    """Cut every file of `image` as `variant` says; returns counts of what was lost."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown power-loss variant {variant!r}; one of {VARIANTS}")
    lost = Counter[str]()
    for path, state in sorted(image.items()):
        if variant != "process" and not state.name_durable:
            path.unlink(missing_ok=True)
            lost["files_vanished"] += 1
            lost["bytes_lost"] += len(state.data)
            continue
        kept = _survivor(state, variant, rng)
        lost["bytes_lost"] += sum(1 for a, b in zip(kept, state.data, strict=False) if a != b)
        lost["bytes_lost"] += max(0, len(state.data) - len(kept))
        path.write_bytes(kept)
    return dict(lost)


def _survivor(state: FileState, variant: str, rng: random.Random) -> bytes:
    data, durable = state.data, min(state.durable, len(state.data))
    if variant == "process" or durable == len(data):
        return data
    if variant == "drop":
        return data[:durable]
    if variant == "zeros":
        return data[:durable] + bytes(len(data) - durable)
    boundaries = list(range((durable // PAGE + 1) * PAGE, len(data), PAGE))  # torn: whole pages survive
    cut = rng.choice(boundaries) if boundaries else durable
    return data[:cut]


def power_loss_from_journal(journal: Path, variant: str, rng: random.Random) -> dict[str, int]:
    """After a SIGKILL of a broker run with a journal: cut its files as a power loss would have."""
    durable: dict[Path, int] = {}
    unsynced: set[Path] = set()
    for line in journal.read_text().splitlines():
        entry = json.loads(line)
        if "created" in entry:
            unsynced.add(Path(entry["created"]))
        elif "named" in entry:
            unsynced.discard(Path(entry["named"]))
            durable.setdefault(Path(entry["named"]), 0)
        else:
            durable[Path(entry["path"])] = entry["durable"]
    image = {
        path: FileState(path.read_bytes(), durable.get(path, 0), path not in unsynced)
        for path in {*durable, *unsynced}
        if path.exists()
    }
    journal.unlink()
    return apply_power_loss(image, variant, rng)


def from_environment() -> FileOps | None:
    """The fault plan a test handed a broker process through FORESHARD_BROKER_FAULTS, if any."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    plan = json.loads(raw)
    fail = plan.get("fail")
    fault = Fault(fail["op"], getattr(errnos, fail["errno"]), int(fail.get("after", 0))) if fail else None
    journal = plan.get("journal")
    return FaultyFileOps(fail=fault, journal=Path(journal) if journal else None)
