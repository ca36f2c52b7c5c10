"""The OS calls the segment log makes, behind one seam so tests can inject faults.

`FileOps` is the real thing (thin wrappers over `os`). `storage/faults.py` subclasses it to model
what a disk does at a power loss (bytes written since the last fdatasync may vanish, be torn at a
page boundary or read back as zeros) and to fail a chosen call with EIO or ENOSPC.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class FileOps:
    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def writev(self, fd: int, buffers: Sequence[bytes]) -> int:
        return os.writev(fd, buffers)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def truncate(self, path: Path, size: int) -> None:
        """Cut a file to `size` bytes, durably."""
        with open(path, "r+b") as handle:
            handle.truncate(size)
            os.fsync(handle.fileno())

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def sync_directory(self, directory: Path) -> None:
        """fsync a directory, so the names created, replaced or removed in it survive a power loss."""
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sync_directory(directory: Path) -> None:
    FileOps().sync_directory(directory)
