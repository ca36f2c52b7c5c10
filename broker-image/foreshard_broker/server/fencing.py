"""The broker's pause maps, made from unleased pauses (memory only) and fence leases (persisted).

`Broker.paused_slots` / `paused_keys` are what the data path reads; this class is their only
writer. Every change recomputes them from the two sources, counts pause time per slot or key (for
metrics), wakes parked deliveries when something was lifted, and keeps one timer armed at the
earliest lease expiry, so a lease nobody renews lifts itself (the rollback of a dead orchestrator).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from foreshard_broker.server.broker import Broker
from foreshard_broker.server.fences import Lease, LeaseBook

log = logging.getLogger("foreshard_broker.fencing")


class Fencing:
    def __init__(self, broker: Broker, book: LeaseBook) -> None:
        self.broker = broker
        self.book = book
        self.unleased_slots: dict[int, int] = {}
        self.unleased_keys: dict[str, int] = {}
        self._paused_since: dict[int | str, float] = {}
        self._pause_total = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()

    def pause_seconds(self, now: float) -> float:
        """Total time slots and keys have spent paused, counting the pauses still open."""
        return self._pause_total + sum(now - since for since in self._paused_since.values())

    def load(self) -> None:
        """Restore the persisted leases (those that lapsed while the broker was down are dropped)."""
        self.book.load()
        self._apply()
        self._arm()

    # ------------------------------------------------------------------ unleased pauses
    def pause(self, slots: Iterable[int], keys: Iterable[str], retry_after_ms: int) -> None:
        self.unleased_slots.update(dict.fromkeys(slots, retry_after_ms))
        self.unleased_keys.update(dict.fromkeys(keys, retry_after_ms))
        self._apply()

    def resume(self, slots: Iterable[int], keys: Iterable[str]) -> None:
        for slot in slots:
            self.unleased_slots.pop(slot, None)
        for key in keys:
            self.unleased_keys.pop(key, None)
        self._apply()

    # ------------------------------------------------------------------ leases
    async def grant(
        self, lease_id: str, slots: Iterable[int], keys: Iterable[str], ttl_ms: int, retry_after_ms: int
    ) -> tuple[Lease, bool]:
        """Hold or renew a lease; persisted before it is returned (it must outlive a crash)."""
        lease, renewed = self.book.grant(lease_id, slots, keys, ttl_ms, retry_after_ms)
        self._apply()
        self._arm()
        await self.book.persist()
        return lease, renewed

    async def lift(self, lease_id: str) -> bool:
        lifted = self.book.lift(lease_id) is not None
        if lifted:
            self._apply()
            self._arm()
            await self.book.persist()
        return lifted

    def unfenced(self, slots: set[int], keys: set[str]) -> tuple[list[int], list[str]]:
        """Which of these are held by no lease and no pause: taken away unfenced, a mover whose
        lease lapsed before the switch must copy their tail again before any other shard serves."""
        return (
            sorted(slot for slot in slots if slot not in self.broker.paused_slots),
            sorted(key for key in keys if key not in self.broker.paused_keys),
        )

    async def taken_away(self, slots: set[int], keys: set[str]) -> None:
        """Lift every pause of what a new routing table took away (MOVED is the answer now)."""
        for slot in slots:
            self.unleased_slots.pop(slot, None)
        for key in keys:
            self.unleased_keys.pop(key, None)
        trimmed = self.book.trim(slots, keys)
        self._apply()
        if trimmed:
            self._arm()
            await self.book.persist()

    # ------------------------------------------------------------------ the pause maps
    def _apply(self) -> None:
        slots, keys = self.book.fenced()
        slots.update(self.unleased_slots)
        keys.update(self.unleased_keys)
        broker, now = self.broker, time.monotonic()
        lifted: list[int | str] = [
            *(set(broker.paused_slots) - set(slots)),
            *(set(broker.paused_keys) - set(keys)),
        ]
        for item in lifted:
            self._pause_total += now - self._paused_since.pop(item, now)
        held: list[int | str] = [*slots, *keys]
        for item in held:
            self._paused_since.setdefault(item, now)
        broker.paused_slots, broker.paused_keys = slots, keys
        if lifted:
            broker.unpark_all()

    def _arm(self) -> None:
        """One timer at the earliest expiry; re-armed after every change."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        expiry = self.book.next_expiry_ms()
        if expiry is None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop (a synchronous unit test): no timer
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, (expiry - self.book.clock_ms()) / 1000), self._expire)

    def _expire(self) -> None:
        self._timer = None
        lapsed = self.book.lapsed()
        for lease_id in lapsed:
            self.book.lift(lease_id)
            log.warning("fence lease lapsed; the selection is served here again", extra={"lease": lease_id})
        if lapsed:
            self._apply()
            task = asyncio.ensure_future(self.book.persist())
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        self._arm()
