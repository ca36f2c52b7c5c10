"""Small state files next to the log (routing table, fence leases, import marks), replaced atomically.

A replace is durable only once the directory entry is: the file is fsynced, renamed over the old
one, then its directory is fsynced, so after a power loss the shard holds either the old or the new
file, never an empty one and never the old one after answering with the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from foreshard_broker.storage.fileops import sync_directory


def write_json(path: Path, body: Any, durable: bool = True) -> None:
    """Replace `path` with `body` as JSON; with `durable`, fsync the file and its directory."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    with open(temporary, "w") as handle:
        json.dump(body, handle, separators=(",", ":"))
        handle.flush()
        if durable:
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if durable:
        sync_directory(path.parent)


def read_json(path: Path | None) -> Any:
    """The file's JSON body, or None when there is no such file."""
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text())
