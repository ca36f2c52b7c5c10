"""Move one slot between two brokers through the admin API (DESIGN.md §4), in five steps:

    prepare  copy the slot's backlog ahead, while the source keeps serving
    fence    pause the slot on the source; wait (bounded) for its in-flight deliveries to be acked;
             copy the delta and the consumer-group state
    switch   raise the routing epoch (slot -> target) on every broker
    resume   the source answers MOVED, the target serves the slot: the broker lifts the source's
             pause when the switch takes the slot away, so the measured pause ends with the switch
             (the explicit Resume after it is a no-op kept for brokers that predate that)
    drain    release the slot's data on the source

Every step is idempotent, so a caller that crashed can run the same move again.  The operator's
migration state machine performs the same steps; this function is the straight-line version used by
tests and tools.  The pause the slot saw (fence to switch) is returned.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from foreshard_broker.client.transport import AdminTransport, RoutingTable


class MoveError(Exception):
    """The move could not complete; the source still owns the slot (or the switch must be retried)."""


@dataclass(frozen=True)
class MoveReport:
    slot: int
    source: int
    target: int
    epoch: int
    paused_s: float
    inflight_at_switch: int
    # Where the pause went: waiting for in-flight acks, copying delta and group state, switching.
    fence_s: float = 0.0
    copy_s: float = 0.0
    switch_s: float = 0.0


def moved(table: RoutingTable, slot: int, target: int) -> RoutingTable:
    """The routing table with ``slot`` owned by ``target``, one epoch later."""
    owners = list(table.slot_owners)
    owners[slot] = target
    return RoutingTable(
        table.epoch + 1, table.num_slots, tuple(owners), dict(table.pinned), dict(table.endpoints)
    )


async def move_slot(
    transport: AdminTransport,
    table: RoutingTable,
    slot: int,
    target: int,
    inflight_timeout_s: float = 5.0,
    clock: Callable[[], float] | None = None,
) -> tuple[RoutingTable, MoveReport]:
    """Move ``slot`` to shard ``target``; returns the new routing table and what the move cost."""
    now = clock or asyncio.get_running_loop().time
    source = table.slot_owners[slot]
    if source == target:
        raise MoveError(f"slot {slot} already belongs to shard {target}")
    source_ep, target_ep = table.endpoint(source), table.endpoint(target)
    ahead = await transport.copy_backlog(source_ep, target_ep, slot, 0)
    marks = [now()]
    inflight = await _fence(transport, source_ep, slot, now() + inflight_timeout_s, now)
    marks.append(now())
    await transport.copy_backlog(source_ep, target_ep, slot, ahead)
    await transport.copy_group_state(source_ep, target_ep, slot)
    marks.append(now())
    new_table = moved(table, slot, target)
    # All brokers at once: each persists the table before answering, and a client that meets the
    # two owners at different epochs just retries (MOVED at an older epoch backs off briefly).
    everyone = sorted({*table.endpoints.values(), target_ep})
    await asyncio.gather(*(transport.update_routing(endpoint, new_table) for endpoint in everyone))
    marks.append(now())  # the target serves the slot from here: the pause ends with the switch
    # The switch lifted the source's pause; Resume is kept (idempotent) for brokers that predate that,
    # so a slot that later moves back is never left paused there.
    await transport.resume(source_ep, slot)
    await transport.release(source_ep, slot)
    fence_s, copy_s, switch_s = (b - a for a, b in itertools.pairwise(marks))
    report = MoveReport(
        slot, source, target, new_table.epoch, marks[-1] - marks[0], inflight, fence_s, copy_s, switch_s
    )
    return new_table, report


async def _fence(
    transport: AdminTransport, endpoint: str, slot: int, deadline: float, now: Callable[[], float]
) -> int:
    """Pause the slot and wait until its in-flight deliveries are acked, or the deadline passes.

    Deliveries still unacked at the deadline move as "to redeliver": order holds, but the consumer
    may see those messages twice, so the wait is worth a few milliseconds of pause.
    """
    inflight = await transport.pause(endpoint, slot)
    delay = 0.001
    while inflight and now() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.01)
        inflight = await transport.pause(endpoint, slot)
    return inflight
