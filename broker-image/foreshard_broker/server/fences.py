"""Fence leases: a move's pause of a selection, persisted on the source and expiring by itself.

    Fence(lease, selection, ttl)  -> held (persisted before the answer), PAUSED to publishers,
                                     nothing of the selection delivered
    Fence again, same lease       -> renewed: expires ttl after this call
    Unfence(lease)                -> lifted: the selection is served here again (rollback)
    ttl passes without a renewal  -> lifted the same way (a dead orchestrator rolls back by itself)
    UpdateRouting takes it away   -> the taken slots and keys leave the lease (MOVED from now on)

Expiry is wall-clock time (milliseconds since the epoch), because it must mean the same after a
restart of the source: a lease that lapsed while the broker was down is dropped when it starts.
The book only holds and persists leases; `Admin` turns them into the broker's pause maps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from foreshard_broker.server import errors
from foreshard_broker.server.files import read_json, write_json

MIN_TTL_MS, MAX_TTL_MS, DEFAULT_TTL_MS = 100, 600_000, 10_000
MAX_LEASE_ID_BYTES = 128


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Lease:
    lease_id: str
    slots: frozenset[int]
    keys: frozenset[str]
    granted_at_ms: int
    expires_at_ms: int
    retry_after_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.lease_id,
            "slots": sorted(self.slots),
            "keys": sorted(self.keys),
            "granted_at_ms": self.granted_at_ms,
            "expires_at_ms": self.expires_at_ms,
            "retry_after_ms": self.retry_after_ms,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Lease:
        return cls(
            raw["id"],
            frozenset(raw["slots"]),
            frozenset(raw["keys"]),
            raw["granted_at_ms"],
            raw["expires_at_ms"],
            raw["retry_after_ms"],
        )


def check_lease(lease_id: str, ttl_ms: int) -> int:
    """Validate a Fence request's lease id and ttl; returns the ttl to use."""
    if not lease_id:
        raise errors.InvalidInput("lease_id is empty; name the lease (e.g. the migration id and attempt)")
    if len(lease_id.encode()) > MAX_LEASE_ID_BYTES:
        raise errors.InvalidInput(f"lease_id is longer than {MAX_LEASE_ID_BYTES} bytes")
    ttl = ttl_ms or DEFAULT_TTL_MS
    if not MIN_TTL_MS <= ttl <= MAX_TTL_MS:
        raise errors.InvalidInput(f"ttl_ms={ttl_ms} is out of range; give {MIN_TTL_MS}..{MAX_TTL_MS} ms")
    return ttl


class LeaseBook:
    """The leases this shard holds, persisted to one file (replaced atomically on every change)."""

    def __init__(self, path: Path | None, durable: bool, clock_ms: Callable[[], int] = wall_ms) -> None:
        self.path = path
        self.durable = durable
        self.clock_ms = clock_ms
        self.held: dict[str, Lease] = {}
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Restore the leases of the last run, dropping those that lapsed meanwhile."""
        raw = read_json(self.path)
        now = self.clock_ms()
        for entry in (raw or {}).get("leases", []):
            lease = Lease.from_json(entry)
            if lease.expires_at_ms > now:
                self.held[lease.lease_id] = lease

    def grant(
        self, lease_id: str, slots: Iterable[int], keys: Iterable[str], ttl_ms: int, retry_after_ms: int
    ) -> tuple[Lease, bool]:
        """Hold (or renew) a lease; returns it and whether it was already held."""
        slots, keys, now = frozenset(slots), frozenset(keys), self.clock_ms()
        current = self.held.get(lease_id)
        if current is not None:
            if (current.slots, current.keys) != (slots, keys):
                raise errors.Conflict(f"lease {lease_id!r} already fences a different selection")
            renewed = replace(current, expires_at_ms=now + ttl_ms, retry_after_ms=retry_after_ms)
            self.held[lease_id] = renewed
            return renewed, True
        for other in self.held.values():
            overlap: list[int | str] = [*sorted(slots & other.slots)[:5], *sorted(keys & other.keys)[:5]]
            if overlap:
                raise errors.Conflict(
                    f"{overlap} already fenced by lease {other.lease_id!r}; unfence it or let it lapse"
                )
        lease = Lease(lease_id, slots, keys, now, now + ttl_ms, retry_after_ms)
        self.held[lease_id] = lease
        return lease, False

    def lift(self, lease_id: str) -> Lease | None:
        return self.held.pop(lease_id, None)

    def lapsed(self) -> list[str]:
        now = self.clock_ms()
        return [lease.lease_id for lease in self.held.values() if lease.expires_at_ms <= now]

    def next_expiry_ms(self) -> int | None:
        return min((lease.expires_at_ms for lease in self.held.values()), default=None)

    def trim(self, slots: Iterable[int], keys: Iterable[str]) -> bool:
        """Take slots and keys out of every lease (they moved away); drop leases left empty."""
        slots, keys = frozenset(slots), frozenset(keys)
        changed = False
        for lease in list(self.held.values()):
            if lease.slots & slots or lease.keys & keys:
                changed = True
                kept = replace(lease, slots=lease.slots - slots, keys=lease.keys - keys)
                if kept.slots or kept.keys:
                    self.held[lease.lease_id] = kept
                else:
                    del self.held[lease.lease_id]
        return changed

    def fenced(self) -> tuple[dict[int, int], dict[str, int]]:
        """Slot -> retry-after ms and key -> retry-after ms over every lease held."""
        slots: dict[int, int] = {}
        keys: dict[str, int] = {}
        for lease in self.held.values():
            slots.update(dict.fromkeys(lease.slots, lease.retry_after_ms))
            keys.update(dict.fromkeys(lease.keys, lease.retry_after_ms))
        return slots, keys

    async def persist(self) -> None:
        """Write the book as it is now (the lock orders writers, so the file ends at the latest)."""
        if self.path is None:
            return
        async with self._lock:
            body = {"leases": [lease.to_json() for lease in self.held.values()]}
            await asyncio.to_thread(write_json, self.path, body, self.durable)
