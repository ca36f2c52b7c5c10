"""A typed view of one `status.migrations[]` item (no I/O), and its phases.

The status item is the migration's only memory: the operator records it before acting, and a
restarted operator resumes from it. Times are seconds since the epoch here and RFC 3339 strings in
the CR (`phaseSince`, `startedAt`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """Mirrors the CRD enum of `status.migrations[].phase`."""

    PREPARE = "Prepare"
    FENCE = "Fence"
    SWITCH = "Switch"
    RESUME = "Resume"
    DRAIN = "Drain"
    DONE = "Done"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"


TERMINAL = frozenset({Phase.DONE, Phase.ROLLED_BACK})
BEFORE_SWITCH = frozenset({Phase.PREPARE, Phase.FENCE})


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def seconds_of(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Item:
    """What moves: the ordinary keys of a slot, or one pinned key (exactly one of the two)."""

    slot: int | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if (self.slot is None) == (self.key is None):
            raise ValueError("a migration moves exactly one slot or one pinned key; give one of slot, key")
        if self.slot is not None and self.slot < 0:
            raise ValueError(f"slot {self.slot} is negative")
        if self.key == "":
            raise ValueError("a pinned key must not be empty")

    @classmethod
    def parse(cls, item: str) -> Item:
        """`slot/17` or `key/<name>`, the notation of the placement's moves."""
        kind, _, name = item.partition("/")
        if kind == "slot" and name.isdigit():
            return cls(slot=int(name))
        if kind == "key" and name:
            return cls(key=name)
        raise ValueError(f"{item!r} is neither slot/<number> nor key/<name>")

    def __str__(self) -> str:
        return f"slot/{self.slot}" if self.slot is not None else f"key/{self.key}"


@dataclass(frozen=True)
class Migration:
    id: str
    item: Item
    source: int
    target: int
    phase: Phase = Phase.PREPARE
    epoch: int = 0  # the routing epoch of the switch, recorded with Switch
    copied_through: int = 0  # the next source offset to copy (copy-ahead cursor, then the fence's)
    attempt: int = 1  # a rolled-back attempt that may be retried starts the next one
    phase_since_s: float = 0.0
    started_at_s: float = 0.0
    pause_ms: float | None = None  # the pause the item's keys saw, measured at the switch
    reason: str = ""  # why the last transition or failure happened, for people
    failures: int = 0  # consecutive failed actions in this phase
    copied_bytes: int = 0  # keys and payloads copied to the target (copy-ahead and fence delta)
    copy_ms: float = 0.0  # time spent copying them (copy-ahead rounds and the fence)
    fence_ms: float | None = None  # the pause's first part: fence, delta and group-state import
    settle_ms: float | None = None  # of which the source waited for in-flight deliveries' acks

    @property
    def lease_id(self) -> str:
        """The fence lease of this attempt (a retry never renews an older attempt's lease)."""
        return f"{self.id}/{self.attempt}"

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    def entering(self, phase: Phase, now_s: float, reason: str = "", **changes: Any) -> Migration:
        return replace(self, phase=phase, phase_since_s=now_s, reason=reason, failures=0, **changes)

    def to_status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "target": self.target,
            "phase": str(self.phase),
            "epoch": self.epoch,
            "copiedThrough": self.copied_through,
            "attempt": self.attempt,
            "phaseSince": timestamp(self.phase_since_s),
            "startedAt": timestamp(self.started_at_s),
            "failures": self.failures,
        }
        if self.item.slot is not None:
            body["slot"] = self.item.slot
        else:
            body["key"] = self.item.key
        if self.pause_ms is not None:
            body["pauseMs"] = round(self.pause_ms, 3)
        if self.fence_ms is not None:
            body["fenceMs"] = round(self.fence_ms, 3)
        if self.settle_ms is not None:
            body["settleMs"] = round(self.settle_ms, 3)
        if self.copied_bytes or self.copy_ms:
            body["copiedBytes"] = self.copied_bytes
            body["copyMs"] = round(self.copy_ms, 3)
        if self.reason:
            body["reason"] = self.reason[:1024]
        return body

    @classmethod
    def from_status(cls, body: dict[str, Any]) -> Migration:
        since = seconds_of(body["phaseSince"]) if body.get("phaseSince") else 0.0
        return cls(
            id=body["id"],
            item=Item(body.get("slot"), body.get("key")),
            source=int(body["source"]),
            target=int(body["target"]),
            phase=Phase(body["phase"]),
            epoch=int(body.get("epoch", 0)),
            copied_through=int(body.get("copiedThrough", 0)),
            attempt=int(body.get("attempt", 1)),
            phase_since_s=since,
            started_at_s=seconds_of(body["startedAt"]) if body.get("startedAt") else since,
            pause_ms=body.get("pauseMs"),
            reason=body.get("reason", ""),
            failures=int(body.get("failures", 0)),
            copied_bytes=int(body.get("copiedBytes", 0)),
            copy_ms=float(body.get("copyMs", 0.0)),
            fence_ms=body.get("fenceMs"),
            settle_ms=body.get("settleMs"),
        )
