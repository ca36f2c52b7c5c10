"""Consumer groups in the forecast cycle: backlog and ack forecasts -> decision -> scale -> metrics.

The ack history of each group is read and forecast with the keys (reconcile/forecasts.py puts the
`group:<name>` series among its targets); this module turns those forecasts and the queue's demand
into each group's prediction, resizes the workload its scaleTargetRef names, and exports the
predictions as metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from foreshard.adapters.kube import ForecastPort, ScaleRef
from foreshard.adapters.metrics import PREDICTED_ACKS, PREDICTED_ARRIVALS, PREDICTED_BACKLOG
from foreshard.api.consumers import ConsumerGroup
from foreshard.api.names import ANNOTATION_APPROVE_PLAN
from foreshard.api.shardallocation import QueueSpec
from foreshard.core.forecasting import Forecast
from foreshard.core.planning import consumers
from foreshard.core.planning.consumers import GroupDecision, GroupPolicy

DEFAULT_HORIZON_S = 900.0


@dataclass(frozen=True)
class GroupForecast:
    group: ConsumerGroup
    backlog: float | None  # None: Prometheus has no counters for the group yet
    acks: Forecast | None
    problem: str | None = None


def series_id(group: str) -> str:
    return f"group:{group}"


def policy(spec: QueueSpec, body: Mapping[str, Any]) -> GroupPolicy:
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    approved = frozenset(v.strip() for v in str(annotations.get(ANNOTATION_APPROVE_PLAN, "")).split(","))
    return GroupPolicy(
        mode=spec.scaling.mode,
        lead_s=spec.scaling.lead_s,
        horizon_s=spec.forecast.short_horizon_s or DEFAULT_HORIZON_S,
        stabilization_s=spec.scaling.stabilization_s,
        quantile=spec.forecast.planning_quantile,
        approved=approved - {""},
    )


def act(
    body: Mapping[str, Any],
    groups: Sequence[GroupForecast],
    arrivals: Forecast | None,
    kube: ForecastPort,
    now_s: float,
) -> list[GroupDecision]:
    """Decide every group that has forecasts; resize the scale targets that changed; export."""
    spec = QueueSpec.from_body(dict(body))
    rules = policy(spec, body)
    previous = {str(g.get("name")): g for g in ((body.get("status") or {}).get("consumerGroups") or [])}
    out = []
    for one in groups:
        if arrivals is None or one.acks is None or one.backlog is None:
            continue
        ref = _ref(one.group)
        current = None if ref is None else kube.read_scale(spec.namespace, ref)
        observed = (one.backlog, arrivals, one.acks)
        found = consumers.decide(
            spec.name, one.group, observed, current, previous.get(one.group.name, {}), now_s, rules
        )
        if ref is not None and found.replicas is not None and found.replicas != current:
            kube.patch_scale(spec.namespace, ref, found.replicas)
        _export(spec, found)
        out.append(found)
    return out


def _ref(group: ConsumerGroup) -> ScaleRef | None:
    target = group.target
    return None if target is None else ScaleRef(target.api_version, target.kind, target.name)


def _export(spec: QueueSpec, found: GroupDecision) -> None:
    labels = (spec.namespace, spec.name, found.name)
    PREDICTED_ARRIVALS.labels(*labels).set(found.predicted_arrivals)
    PREDICTED_BACKLOG.labels(*labels).set(found.predicted_backlog)
    PREDICTED_ACKS.labels(*labels).set(found.predicted_acks)
