"""capacity.learn in the forecast cycle: broker CPU and bytes against messages -> one shard's capacity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from foreshard.api.shardallocation import QueueSpec
from foreshard.core.planning.capacity import InsufficientLoad, LoadSample, ShardCapacity, learn_capacity

WINDOW_S = 3600.0  # learn from the last hour of broker load
STEP_S = 60.0
RATE_WINDOW_S = 120.0  # two steps: a rate needs at least two scrapes inside its window


class LoadReader(Protocol):
    def load(
        self, queue: str, start_s: float, end_s: float, step_s: float, window_s: float
    ) -> list[LoadSample]: ...


def wanted(body: Mapping[str, Any]) -> bool:
    return bool(((body.get("spec") or {}).get("capacity") or {}).get("learn"))


def cores(quantity: str) -> float | None:
    """A CPU quantity ("2", "500m", "1.5") in cores; None when it is not one."""
    try:
        return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    except ValueError:
        return None


@dataclass(frozen=True)
class Learnt:
    capacity: ShardCapacity | None  # None while the brokers have not carried enough load
    why: str
    samples: int

    def to_status(self) -> dict[str, Any]:
        if self.capacity is None:
            return {"samples": self.samples, "basis": self.why[:1024]}
        return {
            "messagesPerSecond": round(self.capacity.messages_per_s, 2),
            "cpuSecondsPerMessage": float(f"{self.capacity.cpu_seconds_per_message:.4g}"),
            "samples": self.samples,
            "basis": self.capacity.basis[:1024],
        }


def learn(
    spec: QueueSpec, body: Mapping[str, Any], reader: LoadReader, now_s: float, step_s: float = STEP_S
) -> Learnt:
    """What the last WINDOW_S of broker load says one shard sustains."""
    end_s = now_s // step_s * step_s
    samples = reader.load(spec.name, end_s - WINDOW_S, end_s, step_s, max(RATE_WINDOW_S, 2 * step_s))
    limit = dict(spec.template.limits).get("cpu")
    disk = ((body.get("spec") or {}).get("capacity") or {}).get("bytesPerSecond")
    try:
        found = learn_capacity(samples, cores(limit) if limit else None, float(disk) if disk else None)
    except InsufficientLoad as error:
        return Learnt(None, f"capacity.learn: {error}", len(samples))
    return Learnt(
        found, f"capacity.learn: {found.messages_per_s:.0f} msg/s per shard ({found.basis})", len(samples)
    )
