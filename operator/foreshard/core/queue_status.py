"""What the ShardAllocation status should say, from what was observed. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreshard.api import conditions
from foreshard.api.conditions import Condition


@dataclass(frozen=True)
class Observed:
    """Facts gathered in one reconcile pass."""

    replicas: int  # what the StatefulSet asks for now (0 when it does not exist yet)
    ready_replicas: int


def ready_condition(desired: int, observed: Observed) -> Condition:
    if observed.ready_replicas >= desired and observed.replicas == desired:
        return Condition(conditions.READY, "True", "ShardsReady", f"All {desired} shard pods are ready.")
    return Condition(
        conditions.READY,
        "False",
        "ShardsStarting",
        f"{observed.ready_replicas} of {desired} shard pods are ready; waiting for the StatefulSet.",
    )


def scaling_condition(desired: int, observed: Observed) -> Condition:
    if observed.replicas == desired:
        return Condition(conditions.SCALING, "False", "AtTarget", f"The StatefulSet runs {desired} shards.")
    return Condition(
        conditions.SCALING,
        "True",
        "Resizing",
        f"Resizing the StatefulSet from {observed.replicas} to {desired} shards.",
    )


def next_status(
    previous: dict[str, Any], generation: int, desired: int, observed: Observed, now: str
) -> dict[str, Any]:
    merged: list[dict[str, Any]] = list(previous.get("conditions", []))
    for condition in (ready_condition(desired, observed), scaling_condition(desired, observed)):
        merged = conditions.merge(merged, condition, now, generation)
    return {
        "observedGeneration": generation,
        "conditions": merged,
        "shards": {"desired": desired, "ready": observed.ready_replicas},
    }


def owned_by(manifest: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with a controller reference to `owner`, so deleting the queue deletes its shards."""
    reference = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    metadata = {**manifest["metadata"], "ownerReferences": [reference]}
    return {**manifest, "metadata": metadata}
