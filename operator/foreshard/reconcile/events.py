"""An Event a pass posts on its ShardAllocation (the handler hands it to kopf)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False
