"""What the ShardAllocation status should say, from what was observed. Pure."""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(frozen=True)
class Report:
    """What the decision adds to the status; empty for a pass that made no plan."""

    conditions: Sequence[Condition] = ()  # e.g. Forecasting
    holding: Condition | None = None  # replaces Scaling=AtTarget when the plan is not applied
    plan: dict[str, Any] | None = None
    last_decision: str | None = None


def next_status(
    previous: dict[str, Any],
    generation: int,
    desired: int,
    observed: Observed,
    now: str,
    report: Report | None = None,
) -> dict[str, Any]:
    report = report or Report()
    scaling = scaling_condition(desired, observed)
    if report.holding is not None and observed.replicas == desired:
        scaling = report.holding
    merged: list[dict[str, Any]] = list(previous.get("conditions", []))
    for condition in (ready_condition(desired, observed), scaling, *report.conditions):
        merged = conditions.merge(merged, condition, now, generation)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merged,
        "shards": {"desired": desired, "ready": observed.ready_replicas},
        # None removes a stale plan (merge patch): its decidedAt must not count towards a later wait
        "plan": report.plan,
    }
    if report.last_decision is not None:
        status["lastDecision"] = report.last_decision[:1024]  # the CRD's bound
    return status


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
