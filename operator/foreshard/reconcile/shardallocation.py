"""One reconcile pass of a ShardAllocation: gather -> decide (core) -> act (adapters) -> report.

Level-based: nothing is remembered between passes except what status says; the timer re-runs the
pass, and a fresh process reaches the same decision from the same history, status and time.

    forecast decision -> replicas (never below the shards that own slots or a move still needs)
        -> Service + StatefulSet
        -> routing (record a table, or push the recorded one to brokers behind it; no push while a
           move is between Fence and Resume)
        -> migrations (timer passes only, when routing records nothing: advance the moves in flight,
           plan the next wave; written by the StatusRecorder itself, see reconcile/migrations.py)
        -> status (without migrations and routing unless routing recorded), Events
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from foreshard.adapters import prometheus
from foreshard.adapters.brokers import BrokerAdmin, EndpointResolver
from foreshard.adapters.kube import ApplyRefused, KubePort
from foreshard.adapters.metrics import (
    DESIRED_SHARDS,
    FORECAST_PEAK,
    FORECAST_READY,
    PLANNED_SHARDS,
    READY_SHARDS,
    ROUTING_EPOCH,
    SHARD_CAPACITY,
)
from foreshard.api import conditions
from foreshard.api import routing as routing_status
from foreshard.api.conditions import Condition
from foreshard.api.migration import Migration
from foreshard.api.shardallocation import QueueSpec
from foreshard.core import decision, queue_status, routing, workload
from foreshard.core.migration.machine import Result
from foreshard.core.series import Series
from foreshard.reconcile import forecasts, migrations
from foreshard.reconcile.events import Event
from foreshard.reconcile.routing import Routed, route
from foreshard_broker.routing import RoutingTable

# The one decision function: this pass calls it, and `foreshard simulate` replays traces through the
# very same object (core/simulation/planner.py), so the comparison measures what ships.
DECIDE = decision.decide


class HistoryReader(Protocol):
    def arrivals(self, queue: str, start_s: float, end_s: float, step_s: float) -> dict[str, Series]: ...


Connect = Callable[[str], HistoryReader]


def connect_briefly(url: str) -> HistoryReader:
    # no retry, 10 s timeout: a dead Prometheus costs a pass seconds, not the client's backoff;
    # the timer is the retry
    return prometheus.connect(url, timeout_s=10, retries=0)


@dataclass(frozen=True)
class Ports:
    """Everything a pass talks to."""

    kube: KubePort
    endpoints: EndpointResolver
    brokers: BrokerAdmin
    connect: Connect = connect_briefly
    movers: migrations.Movers | None = None  # None: this process drives no migration
    results: MutableMapping[str, Result] = field(default_factory=dict)  # last action results, by move
    # per queue (namespace, name): the moves that ended within rebalance.SETTLE_S (migrations.remembered)
    finished: MutableMapping[tuple[str, str], dict[str, Migration]] = field(default_factory=dict)
    pass_interval_s: float = 10.0


# Routed transitions worth an Event (a waiting or recording pass says so in the condition only).
ROUTING_EVENTS = frozenset({"BrokersRouted", "BrokersLagging", "RoutingRefused"})


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    scaled_from: int | None  # previous replica count when this pass changed it
    events: list[Event] = field(default_factory=list)


def gather(spec: QueueSpec, replicas: int, now_s: float, connect: Connect) -> decision.Gathered:
    """The arrival history on the grid of whole steps before now (same step, same data, same plan)."""
    settings = spec.forecast
    if not settings.prometheus_url:
        return decision.Gathered(replicas)
    end_s = now_s // settings.step_s * settings.step_s
    try:
        history = connect(settings.prometheus_url).arrivals(
            spec.name, end_s - settings.lookback_s, end_s, settings.step_s
        )
    except prometheus.PrometheusUnreachable as error:
        why = f"Prometheus at {settings.prometheus_url}: {error}"
        # what this pass saw outranks any forecast read before it (forecasts.publish)
        forecasts.publish(spec.namespace, spec.name, forecasts.Published(now_s, None, None, unreachable=why))
        return decision.Gathered(replicas, unreachable=why)
    return decision.Gathered(replicas, history)


def reconcile(body: dict[str, Any], ports: Ports, now_s: float, drive_migrations: bool = False) -> Outcome:
    spec = QueueSpec.from_body(body)
    kube = ports.kube
    before = kube.observe_stateful_set(spec.namespace, workload.shard_name(spec.name))
    previous: Mapping[str, Any] = body.get("status") or {}
    # the forecast loop (reconcile/forecasts.py) publishes the demand; fit here only without it
    published = forecasts.plan_inputs(spec, before.replicas, now_s)
    if published is not None:
        spec, gathered, estimate = published
        decided = DECIDE(spec, gathered, previous, now_s, estimate)
    else:
        decided = DECIDE(spec, gather(spec, before.replicas, now_s, ports.connect), previous, now_s)
    try:
        recorded = routing_status.from_status(previous.get("routing"), spec.slots)
    except ValueError as error:  # written by someone else: report it, route and scale in nothing
        return _unreadable_routing(body, spec, previous, decided, before, now_s, str(error), kube)
    moves = migrations.recorded(previous)
    desired, held = keep_owning_shards(decided.replicas, recorded, migrations.floor(moves))
    refused = apply_workload(spec, body, desired, kube)
    after = kube.observe_stateful_set(spec.namespace, workload.shard_name(spec.name))
    if refused is not None:  # the StatefulSet runs what it ran: route, report and move by that
        desired = after.replicas
    routed = route(spec, recorded, desired, kube, ports.endpoints, ports.brokers, migrations.hold(moves))
    migrated = migrations.Migrated(None)
    table = routed.decision.table
    if drive_migrations and ports.movers is not None and table is not None and not routed.decision.record:
        planned = decided.plan["targetShards"] if decided.plan is not None else None
        settled = routed.condition.status == "True"
        # moves in flight go on; new ones are planned for the shards that run when the apply failed
        replicas = decided.replicas if refused is None else desired
        inputs = migrations.Inputs(spec, body, table, replicas, settled, planned)
        memory = ports.finished.setdefault((spec.namespace, spec.name), {})
        migrated = migrations.migrate(
            inputs, kube, ports.movers, ports.results, ports.pass_interval_s, memory
        )
    generation = int(body["metadata"].get("generation", 0))
    awaiting = decided.holding is not None and decided.holding.reason == "AwaitingApproval"
    plan = with_moves(decided.plan, migrated.preview, previous.get("plan") or {}, spec, awaiting)
    holding = listing_moves(decided.holding, plan)
    if held is not None:  # the plan's scale-in is not applied: Scaling says why, not AtTarget
        holding = Condition(conditions.SCALING, "False", "DrainBeforeScaleIn", held)
    extra = (migrated.condition,) if migrated.condition is not None else ()
    report = queue_status.Report(
        (decided.forecasting, routed.condition, degraded(refused), *extra),
        holding,
        plan,
        decided.last_decision,
    )
    status = queue_status.next_status(
        dict(previous), generation, desired, after, decision.timestamp(now_s), report
    )
    # Only a table this pass decided to record goes through kopf's patch (applied after the pass
    # returns); status.migrations, and the tables moves switch to, the StatusRecorder wrote already,
    # and a stale copy here would overwrite them.
    if routed.decision.record and table is not None:
        status["routing"] = routing_status.to_status(table)
    _export(spec, decided, desired, after.ready_replicas, routed)
    scaled_from = before.replicas if before.replicas != desired else None
    events = _events(previous, routed, held, scaled_from, desired, decided.event)
    if refused is not None and _reason(previous, conditions.DEGRADED) != "ApplyRefused":
        events.append(Event("ApplyRefused", degraded(refused).message, warning=True))
    return Outcome(status, scaled_from, [*events, *migrated.events])


def apply_workload(spec: QueueSpec, body: dict[str, Any], desired: int, kube: KubePort) -> str | None:
    """Apply the shards' Service and StatefulSet; what the API server refused, or None."""
    try:
        kube.apply(queue_status.owned_by(workload.headless_service(spec), body))
        kube.apply(queue_status.owned_by(workload.stateful_set(spec, desired), body))
    except ApplyRefused as error:
        return str(error)
    return None


def degraded(refused: str | None) -> Condition:
    if refused is None:
        return Condition(
            conditions.DEGRADED,
            "False",
            "Applied",
            "The shards' StatefulSet and Service are as the spec asks.",
        )
    return Condition(
        conditions.DEGRADED,
        "True",
        "ApplyRefused",
        f"The API server refused the {refused}. The shards stay as they are (no scaling; moves in "
        "flight finish, none is planned beyond the running shards) until the spec is fixed.",
    )


MOVE_FIELDS = ("moves", "moveList", "movedBytes", "waves", "expectedPauseMs", "movesWhy")


def with_moves(
    plan: dict[str, Any] | None,
    preview: Mapping[str, Any] | None,
    previous: Mapping[str, Any],
    spec: QueueSpec,
    awaiting: bool = False,
) -> dict[str, Any] | None:
    """status.plan with the moves it needs: this pass's preview (the timer's pass computes it from
    the brokers' loads), else the previous pass's when it was of the same plan. While a plan awaits
    approval its first list stands (what is approved is what was shown),
    and the approved list is carried in `approved` while the annotation names it, for the
    migration step to carry out (reconcile/migrations.py)."""
    if plan is None:
        return None
    same = previous.get("id") == plan.get("id")
    frozen = awaiting and "moveList" in previous
    if same and (preview is None or frozen):
        out = {**plan, **{k: previous[k] for k in MOVE_FIELDS if k in previous}}
    else:
        out = {**plan, **(preview or {})}
    approved = _approved(spec, previous)
    if approved is not None:
        out["approved"] = approved
    return out


def _approved(spec: QueueSpec, previous: Mapping[str, Any]) -> dict[str, Any] | None:
    """The move list of the plan the annotation approved: taken from the plan when it is approved
    (its id is still the plan's), then carried while the annotation names it."""
    if spec.scaling.mode != "Approve" or not spec.approved_plan:
        return None
    if previous.get("id") == spec.approved_plan and "moveList" in previous:
        return {"id": previous["id"], "moves": previous.get("moves", 0), "moveList": previous["moveList"]}
    carried = previous.get("approved")
    return dict(carried) if carried and carried.get("id") == spec.approved_plan else None


def listing_moves(holding: Condition | None, plan: Mapping[str, Any] | None) -> Condition | None:
    """A DryRun or AwaitingApproval condition names the moves the plan would make."""
    if holding is None or plan is None or holding.reason not in ("DryRun", "AwaitingApproval"):
        return holding
    if "movesWhy" not in plan:
        return holding
    size = f"{int(plan.get('movedBytes', 0)) / 1e6:.1f} MB"
    pause = plan.get("expectedPauseMs")
    moves = f" It moves {plan.get('moves', 0)} slots or keys ({size}"
    moves += f", about {pause:.0f} ms pause each)" if pause is not None else ")"
    moves += f": {plan['movesWhy']}. kubectl foreshard plan lists them."
    return Condition(holding.type, holding.status, holding.reason, holding.message + moves)


def _unreadable_routing(
    body: dict[str, Any],
    spec: QueueSpec,
    previous: Mapping[str, Any],
    decided: decision.Decision,
    before: queue_status.Observed,
    now_s: float,
    error: str,
    kube: KubePort,
) -> Outcome:
    """status.routing that cannot be read (someone edited or restored status): without it the
    owners are unknown, so the pass pushes nothing, moves nothing and never scales in."""
    desired = max(decided.replicas, before.replicas)
    kube.apply(queue_status.owned_by(workload.stateful_set(spec, desired), body))
    after = kube.observe_stateful_set(spec.namespace, workload.shard_name(spec.name))
    message = (
        f"status.routing cannot be read ({error}); the operator routes, moves and scales in nothing "
        "until it is repaired (each broker's GetRouting still returns the table it serves)."
    )
    invalid = Condition(conditions.ROUTED, "False", "RoutingInvalid", message)
    report = queue_status.Report(
        (decided.forecasting, invalid), decided.holding, decided.plan, decided.last_decision
    )
    generation = int(body["metadata"].get("generation", 0))
    status = queue_status.next_status(
        dict(previous), generation, desired, after, decision.timestamp(now_s), report
    )
    events = (
        []
        if _reason(previous, conditions.ROUTED) == "RoutingInvalid"
        else [Event("RoutingInvalid", message, True)]
    )
    return Outcome(status, before.replicas if before.replicas != desired else None, events)


def keep_owning_shards(
    planned: int, recorded: RoutingTable | None, moving: int = 0
) -> tuple[int, str | None]:
    """Never fewer shards than own slots (or than a move in flight still needs): a StatefulSet
    scale-in deletes the highest pods and their backlog. Slots leave a shard only by a migration;
    until then the scale-in waits (and says so)."""
    floor = max(routing.floor(recorded), moving)
    if planned >= floor:
        return planned, None
    return floor, (
        f"Scale-in to {planned} shards held at {floor}: shards {planned}-{floor - 1} still own slots "
        "or take part in a move; they are moved off first."
    )


def _events(
    previous: Mapping[str, Any],
    routed: Routed,
    held: str | None,
    scaled_from: int | None,
    desired: int,
    scaled_message: str | None,
) -> list[Event]:
    events = []
    if scaled_from is not None:
        events.append(Event("Scaled", scaled_message or f"Shards {scaled_from} -> {desired}."))
    if held is not None and _reason(previous, conditions.SCALING) != "DrainBeforeScaleIn":
        events.append(Event("DrainBeforeScaleIn", held))
    table = routed.decision.table
    if routed.decision.record and table is not None:
        events.append(Event("RoutingRecorded", f"Routing epoch {table.epoch} recorded in status.routing."))
    now = routed.condition
    if now.reason != _reason(previous, conditions.ROUTED) and now.reason in ROUTING_EVENTS:
        events.append(Event(now.reason, now.message, warning=now.status != "True"))
    return events


def _reason(status: Mapping[str, Any], kind: str) -> str | None:
    found: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})
    return found.get("reason")


def _export(spec: QueueSpec, decided: decision.Decision, desired: int, ready: int, routed: Routed) -> None:
    queue = (spec.namespace, spec.name)
    DESIRED_SHARDS.labels(*queue).set(desired)
    READY_SHARDS.labels(*queue).set(ready)
    FORECAST_READY.labels(*queue).set(1 if decided.forecasting.status == "True" else 0)
    if spec.messages_per_second is not None:  # the learnt capacity when capacity.learn measured one
        SHARD_CAPACITY.labels(*queue).set(spec.messages_per_second)
    if routed.decision.table is not None:
        ROUTING_EPOCH.labels(*queue).set(routed.decision.table.epoch)
    if decided.plan is not None:
        FORECAST_PEAK.labels(*queue).set(decided.plan["forecastPeak"])
        PLANNED_SHARDS.labels(*queue).set(decided.plan["targetShards"])
