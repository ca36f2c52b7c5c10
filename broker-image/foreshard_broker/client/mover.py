"""Move one slot or pinned key between two brokers through the admin API (DESIGN.md §4):

    prepare  copy the backlog ahead while the source keeps serving (ExportBacklog -> ImportBacklog)
    fence    Fence on the source: a persisted lease that lapses by itself, in-flight deliveries
             settle (bounded), the delta and the group state come back in the same reply;
             ImportFenced on the target. The pause is these two round trips and the switch.
    switch   UpdateRouting(epoch+1) on the source first: it answers MOVED and lifts its lease (if
             the lease had lapsed, the tail is copied again before anyone else switches); then on
             every other broker, at once. The target serves the selection from here.
    drain    Release on the source.

Before the switch, any failure rolls back (try/finally): Unfence on the source (the lease would
lapse anyway), Discard on the target; then MoveError, and the source serves as before. Once the
switch has started, the move only rolls forward (pushes are retried; MoveError names the table to
push if they keep failing). Every call is idempotent. The operator's migration state machine
(`foreshard.core.migration`) performs the same calls, recording each phase before acting; this
function is the straight-line version for tools and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from foreshard_broker.client.transport import AdminTransport, RoutingTable, Selection, TransportError

SWITCH_ATTEMPTS = 5


class MoveError(Exception):
    """The move did not complete. ``table`` is None when it rolled back (the source owns the
    selection as before); otherwise it is the table whose push must be completed."""

    def __init__(self, message: str, table: RoutingTable | None = None) -> None:
        super().__init__(message)
        self.table = table


@dataclass(frozen=True)
class MoveReport:
    slot: int  # -1 for a pinned key
    source: int
    target: int
    epoch: int
    paused_s: float
    inflight_at_switch: int
    # Where the pause went: fence + delta import, and the switch.
    fence_s: float = 0.0
    copy_s: float = 0.0
    switch_s: float = 0.0
    key: str = ""


def moved(table: RoutingTable, slot: int, target: int) -> RoutingTable:
    """The routing table with ``slot`` owned by ``target``, one epoch later."""
    owners = list(table.slot_owners)
    owners[slot] = target
    return RoutingTable(
        table.epoch + 1, table.num_slots, tuple(owners), dict(table.pinned), dict(table.endpoints)
    )


def pinned_to(table: RoutingTable, key: str, target: int) -> RoutingTable:
    """The routing table with ``key`` pinned to ``target``, one epoch later."""
    pins = {**table.pinned, key: target}
    return RoutingTable(table.epoch + 1, table.num_slots, table.slot_owners, pins, dict(table.endpoints))


async def move_slot(
    transport: AdminTransport,
    table: RoutingTable,
    slot: int,
    target: int,
    inflight_timeout_s: float = 5.0,
    clock: Callable[[], float] | None = None,
    lease_ttl_s: float = 10.0,
) -> tuple[RoutingTable, MoveReport]:
    """Move ``slot`` to shard ``target``; returns the new routing table and what the move cost."""
    source = table.slot_owners[slot]
    if source == target:
        raise MoveError(f"slot {slot} already belongs to shard {target}")
    mover = _Mover(transport, table, Selection(slots=(slot,)), source, target, clock)
    new_table, report = await mover.run(moved(table, slot, target), inflight_timeout_s, lease_ttl_s)
    return new_table, report


async def move_key(
    transport: AdminTransport,
    table: RoutingTable,
    key: str,
    target: int,
    inflight_timeout_s: float = 5.0,
    clock: Callable[[], float] | None = None,
    lease_ttl_s: float = 10.0,
) -> tuple[RoutingTable, MoveReport]:
    """Pin ``key`` to shard ``target`` (moving its messages there); returns the new table."""
    source = table.owner_of_key(key)
    if source == target:
        raise MoveError(f"key {key!r} already belongs to shard {target}")
    mover = _Mover(transport, table, Selection(keys=(key,)), source, target, clock)
    return await mover.run(pinned_to(table, key, target), inflight_timeout_s, lease_ttl_s)


class _Mover:
    def __init__(
        self,
        transport: AdminTransport,
        table: RoutingTable,
        selection: Selection,
        source: int,
        target: int,
        clock: Callable[[], float] | None,
    ) -> None:
        self.transport, self.table, self.selection = transport, table, selection
        self.source, self.target = source, target
        self.source_ep, self.target_ep = table.endpoint(source), table.endpoint(target)
        self.now = clock or asyncio.get_running_loop().time
        self.lease = f"mover-{uuid.uuid4().hex[:16]}"

    async def run(
        self, new_table: RoutingTable, settle_s: float, ttl_s: float
    ) -> tuple[RoutingTable, MoveReport]:
        t, selection = self.transport, self.selection
        try:
            ahead = await t.copy_backlog(self.source_ep, self.target_ep, selection, 0)
            marks = [self.now()]
            fenced = await t.fence(
                self.source_ep, self.target_ep, selection, self.lease, ttl_s, ahead, settle_s
            )
            marks.append(self.now())
        except TransportError as error:
            left = await self._roll_back()
            raise MoveError(f"moving {selection} rolled back{left}: {error}") from error
        await self._switch(new_table, fenced.high_offset)
        marks.append(self.now())  # the target serves the selection from here: the pause ends
        await t.release(self.source_ep, selection)
        fence_s, switch_s = (b - a for a, b in itertools.pairwise(marks))
        report = MoveReport(
            selection.slots[0] if selection.slots else -1,
            self.source,
            self.target,
            new_table.epoch,
            marks[-1] - marks[0],
            fenced.inflight,
            fence_s,
            0.0,
            switch_s,
            selection.keys[0] if selection.keys else "",
        )
        return new_table, report

    async def _roll_back(self) -> str:
        """Unfence the source (best effort: the lease lapses anyway) and discard the target's copy;
        returns what is left to do, if anything."""
        with contextlib.suppress(TransportError):
            await self.transport.unfence(self.source_ep, self.lease)
        try:
            await self.transport.discard(self.target_ep, self.selection)
        except TransportError as error:
            return f" (the target's partial copy is still there, discard it: {error})"
        return ""

    async def _switch(self, table: RoutingTable, copied_through: int) -> None:
        """Source first (no two owners, even if the lease lapsed), then everyone else; retried."""
        everyone = sorted({*self.table.endpoints.values(), self.target_ep} - {self.source_ep})
        for attempt in range(SWITCH_ATTEMPTS):
            try:
                await self.transport.switch_source(
                    self.source_ep, self.target_ep, table, self.selection, copied_through
                )
                await asyncio.gather(*(self.transport.update_routing(ep, table) for ep in everyone))
                return
            except TransportError as error:
                if attempt == SWITCH_ATTEMPTS - 1:
                    raise MoveError(f"switch to epoch {table.epoch} incomplete: {error}", table) from error
                await asyncio.sleep(0.05 * 2**attempt)
