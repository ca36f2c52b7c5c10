"""`status.routing` <-> `RoutingTable`: compact slot ranges, pins and shard endpoints (no I/O).

The CR stores ranges (`{start, end, shard}`, inclusive) rather than 1024 owners so that `kubectl get
-o yaml` stays readable and the object small; `endpoints` lists every shard of the queue, including
shards a scale-out added that own no slot yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from foreshard_broker.routing import RoutingTable


def ranges(owners: Sequence[int]) -> list[dict[str, int]]:
    """Runs of equal owners as inclusive ranges, in slot order."""
    out: list[dict[str, int]] = []
    for slot, shard in enumerate(owners):
        if out and out[-1]["shard"] == shard and out[-1]["end"] == slot - 1:
            out[-1]["end"] = slot
        else:
            out.append({"start": slot, "end": slot, "shard": shard})
    return out


def owners(slot_ranges: Sequence[Mapping[str, int]], num_slots: int) -> tuple[int, ...]:
    """The inverse of `ranges`; raises ValueError when the ranges leave a slot unowned."""
    table = [-1] * num_slots
    for item in slot_ranges:
        start, end, shard = int(item["start"]), int(item["end"]), int(item["shard"])
        if not 0 <= start <= end < num_slots:
            raise ValueError(f"slot range {start}-{end} is outside 0-{num_slots - 1}")
        table[start : end + 1] = [shard] * (end - start + 1)
    if -1 in table:
        raise ValueError(f"status.routing leaves slot {table.index(-1)} without an owner")
    return tuple(table)


def to_status(table: RoutingTable) -> dict[str, Any]:
    return {
        "epoch": table.epoch,
        "slotRanges": ranges(table.slot_owners),
        "pins": [{"key": key, "shard": shard} for key, shard in sorted(table.pinned.items())],
        "endpoints": [
            {"shard": shard, "endpoint": endpoint} for shard, endpoint in sorted(table.endpoints.items())
        ],
    }


def from_status(routing: Mapping[str, Any] | None, num_slots: int) -> RoutingTable | None:
    """The recorded table, or None while nothing is recorded (epoch 0 or absent)."""
    if not routing or not routing.get("epoch"):
        return None
    return RoutingTable(
        epoch=int(routing["epoch"]),
        num_slots=num_slots,
        slot_owners=owners(routing.get("slotRanges") or [], num_slots),
        pinned={str(p["key"]): int(p["shard"]) for p in routing.get("pins") or []},
        endpoints={int(e["shard"]): str(e["endpoint"]) for e in routing.get("endpoints") or []},
    )
