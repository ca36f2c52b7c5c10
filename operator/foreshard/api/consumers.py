"""A typed view of spec.consumerGroups (no I/O). Defaults mirror the CRD's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreshard.api.shardallocation import seconds


@dataclass(frozen=True)
class ScaleTarget:
    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class ConsumerGroup:
    name: str
    target: ScaleTarget | None = None
    per_replica: float | None = None  # messages/s one replica acknowledges
    min_replicas: int = 1
    max_replicas: int = 10
    drain_s: float = 300.0

    @classmethod
    def from_spec(cls, item: dict[str, Any]) -> ConsumerGroup:
        ref = item.get("scaleTargetRef")
        rate = item.get("messagesPerSecondPerReplica")
        return cls(
            name=str(item["name"]),
            target=None
            if ref is None
            else ScaleTarget(ref.get("apiVersion", "apps/v1"), str(ref["kind"]), str(ref["name"])),
            per_replica=None if rate is None else float(rate),
            min_replicas=int(item.get("minReplicas", 1)),
            max_replicas=int(item.get("maxReplicas", 10)),
            drain_s=seconds(item.get("drainTime", "5m")),
        )


def groups_of(body: dict[str, Any]) -> list[ConsumerGroup]:
    """spec.consumerGroups, sorted by name."""
    items = (body.get("spec") or {}).get("consumerGroups") or []
    return sorted((ConsumerGroup.from_spec(i) for i in items), key=lambda g: g.name)
