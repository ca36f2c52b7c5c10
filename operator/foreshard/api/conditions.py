"""Kubernetes-style conditions: pure helpers that keep lastTransitionTime honest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

READY = "Ready"
FORECASTING = "Forecasting"
SCALING = "Scaling"
MIGRATING = "Migrating"
DEGRADED = "Degraded"
ROUTED = "Routed"  # every shard's broker serves the routing table recorded in status


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True", "False" or "Unknown"
    reason: str  # stable CamelCase
    message: str  # a sentence a person can act on


def merge(
    existing: list[dict[str, Any]], update: Condition, now: str, generation: int
) -> list[dict[str, Any]]:
    """Return the conditions with `update` applied, sorted by type.

    lastTransitionTime moves only when the status changes, so `kubectl describe` tells how long
    a condition has held rather than when the operator last looked.
    """
    previous = next((c for c in existing if c.get("type") == update.type), None)
    changed = previous is None or previous.get("status") != update.status
    entry = {
        "type": update.type,
        "status": update.status,
        "reason": update.reason,
        "message": update.message,
        "lastTransitionTime": now if changed or previous is None else previous["lastTransitionTime"],
        "observedGeneration": generation,
    }
    others = [c for c in existing if c.get("type") != update.type]
    return sorted([*others, entry], key=lambda c: str(c["type"]))
