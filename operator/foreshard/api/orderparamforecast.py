"""A typed view of OrderParamForecast bodies, their names, and the manifests the operator owns (no I/O).

An OrderParamForecast (OPF) forecasts one *target* of a queue: an order key, an inclusive range of
slots, or the tail (every key without a forecast of its own). The operator creates one per heavy key
and per key named in an event, owned by the ShardAllocation through an ownerReference (so deleting
the queue deletes them) and labelled managed-by the operator (so it deletes only its own when a key
stops being tracked); people may create their own for any target, which the operator reconciles and
never deletes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from foreshard.api.names import (
    API_VERSION,
    FIELD_MANAGER,
    LABEL_MANAGED_BY,
    LABEL_QUEUE,
)
from foreshard.api.shardallocation import seconds

KIND = "OrderParamForecast"
TAIL = "__tail__"  # the series id of the tail (the same as core.demand.TAIL)
KEY, SLOTS, TAIL_KIND = "key", "slotRange", "tail"
_UNSAFE = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, order=True)
class Target:
    """What one OPF forecasts; `series_id` names its history series."""

    kind: str  # KEY, SLOTS or TAIL_KIND
    key: str = ""
    start: int = 0
    end: int = 0

    @property
    def series_id(self) -> str:
        if self.kind == KEY:
            return self.key
        if self.kind == SLOTS:
            return f"slots:{self.start}-{self.end}"
        return TAIL

    @staticmethod
    def of_key(key: str) -> Target:
        return Target(KEY, key=key)

    @staticmethod
    def tail() -> Target:
        return Target(TAIL_KIND)

    def spec(self) -> dict[str, Any]:
        if self.kind == KEY:
            return {"key": self.key}
        if self.kind == SLOTS:
            return {"slotRange": {"start": self.start, "end": self.end}}
        return {"tail": True}


@dataclass(frozen=True)
class ForecastObject:
    """One OPF as the reconciler needs it."""

    name: str
    namespace: str
    queue: str
    target: Target
    model: str | None = None  # spec.model: a forced model instead of selection
    horizons_s: tuple[float, ...] = ()
    generation: int = 0
    managed: bool = False  # created by the operator (it may delete it)
    status: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ForecastObject:
        meta, spec = body["metadata"], body.get("spec", {})
        labels = meta.get("labels") or {}
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            queue=spec["queueRef"]["name"],
            target=target_of(spec),
            model=spec.get("model"),
            horizons_s=tuple(seconds(h) for h in spec.get("horizons", [])),
            generation=int(meta.get("generation", 0)),
            managed=labels.get(LABEL_MANAGED_BY) == FIELD_MANAGER,
            status=dict(body.get("status") or {}),
        )


def target_of(spec: dict[str, Any]) -> Target:
    """The target of an OPF spec; the CRD's CEL rule vouches that exactly one is set."""
    if "key" in spec:
        return Target.of_key(str(spec["key"]))
    if "slotRange" in spec:
        rng = spec["slotRange"]
        return Target(SLOTS, start=int(rng["start"]), end=int(rng["end"]))
    if spec.get("tail"):
        return Target.tail()
    raise ValueError("an OrderParamForecast sets exactly one of key, slotRange or tail")


def object_name(queue: str, target: Target) -> str:
    """A stable DNS-subdomain name for the operator's OPF of `target`; distinct keys never collide.

    Keys are arbitrary strings (case, slashes, unicode), so the readable part is a slug and a hash
    of the exact key keeps `Order-1` and `order-1` apart.
    """
    if target.kind == TAIL_KIND:
        return f"{queue}-tail"
    if target.kind == SLOTS:
        return f"{queue}-slots-{target.start}-{target.end}"
    slug = _UNSAFE.sub("-", target.key.lower()).strip("-")[:40].strip("-") or "key"
    digest = hashlib.sha256(target.key.encode()).hexdigest()[:8]
    return f"{queue}-key-{slug}-{digest}"


def manifest(queue_body: dict[str, Any], target: Target) -> dict[str, Any]:
    """The operator's OPF for `target`, owned by the queue (garbage-collected with it)."""
    meta = queue_body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": object_name(meta["name"], target),
            "namespace": meta["namespace"],
            "labels": {LABEL_QUEUE: meta["name"], LABEL_MANAGED_BY: FIELD_MANAGER},
            "ownerReferences": [
                {
                    "apiVersion": queue_body.get("apiVersion", API_VERSION),
                    "kind": queue_body.get("kind", "ShardAllocation"),
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {"queueRef": {"name": meta["name"]}, **target.spec()},
    }
