"""A typed view of a ShardAllocation body (no I/O). Defaults mirror the CRD's."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from foreshard.api.names import ANNOTATION_APPROVE_PLAN, DEFAULT_BROKER_IMAGE

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")


def seconds(text: str) -> float:
    """A CRD duration (`90s`, `1h30m`, `7d`) in seconds; the CRD patterns already vouch for the form."""
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration like 5m, 1h30m or 7d")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


@dataclass(frozen=True)
class ForecastSettings:
    """spec.forecast; without a Prometheus URL the operator sizes to minShards only."""

    prometheus_url: str | None = None
    lookback_s: float = 7 * 86400.0
    step_s: float = 300.0
    long_horizon_s: float = 3600.0
    planning_quantile: float = 0.9
    short_horizon_s: float | None = None  # set: scale-out sizes on [leadTime, shortHorizon] only
    models: tuple[str, ...] | None = None  # model classes the choice is restricted to; None: all
    # >1: the queue's traffic runs this many times faster than wall time (a compressed replay of
    # a trace): its daily and weekly seasons last 1d/timeScale and 7d/timeScale of wall time
    time_scale: int = 1

    @property
    def day_s(self) -> float:
        """A day on the queue's clock, in wall-clock seconds."""
        return 86400.0 / self.time_scale

    @classmethod
    def from_spec(cls, forecast: dict[str, Any]) -> ForecastSettings:
        return cls(
            prometheus_url=forecast.get("prometheusURL"),
            lookback_s=seconds(forecast.get("lookback", "7d")),
            # Prometheus range steps are whole seconds; the CRD pattern would allow 1.5s
            step_s=max(1.0, float(round(seconds(forecast.get("step", "5m"))))),
            long_horizon_s=seconds(forecast.get("longHorizon", "1h")),
            planning_quantile=float(forecast.get("planningQuantile", 0.9)),
            short_horizon_s=seconds(forecast["shortHorizon"]) if "shortHorizon" in forecast else None,
            # an empty list means what an absent one does: the CRD cannot tell them apart for a person
            models=tuple(sorted(forecast["models"])) if forecast.get("models") else None,
            time_scale=int(forecast.get("timeScale", 1)),
        )


@dataclass(frozen=True)
class ScalingPolicy:
    """spec.scaling."""

    mode: str = "Auto"  # Auto, DryRun or Approve
    lead_s: float = 120.0
    headroom: float = 0.2
    stabilization_s: float = 300.0
    max_step_up: int | None = None
    max_step_down: int | None = None

    @classmethod
    def from_spec(cls, scaling: dict[str, Any]) -> ScalingPolicy:
        up, down = scaling.get("maxStepUp"), scaling.get("maxStepDown")
        return cls(
            mode=scaling.get("mode", "Auto"),
            lead_s=seconds(scaling.get("leadTime", "2m")),
            headroom=float(scaling.get("headroom", 0.2)),
            stabilization_s=seconds(scaling.get("scaleDownStabilization", "5m")),
            max_step_up=None if up is None else int(up),
            max_step_down=None if down is None else int(down),
        )


@dataclass(frozen=True)
class MigrationSettings:
    """spec.migration (CRD defaults: 4 moves at once, 50 MB/s of copy, a 500 ms pause budget)."""

    max_concurrent: int = 4
    bytes_per_s: float = 50e6
    pause_budget_s: float = 0.5
    avoid_peaks: bool = False

    @classmethod
    def from_spec(cls, migration: dict[str, Any]) -> MigrationSettings:
        return cls(
            max_concurrent=int(migration.get("maxConcurrentMoves", 4)),
            bytes_per_s=float(migration.get("bytesPerSecond", 50e6)),
            pause_budget_s=seconds(migration.get("pauseBudget", "500ms")),
            avoid_peaks=bool(migration.get("avoidPredictedPeaks", False)),
        )


@dataclass(frozen=True)
class ShardTemplate:
    image: str = DEFAULT_BROKER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    requests: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, str], ...] = ()
    storage_size: str | None = None
    storage_class: str | None = None


@dataclass(frozen=True)
class QueueSpec:
    name: str
    namespace: str
    min_shards: int
    max_shards: int
    slots: int
    template: ShardTemplate
    mode: str = "Auto"
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    scaling: ScalingPolicy = field(default_factory=ScalingPolicy)
    messages_per_second: float | None = None  # None while capacity is to be learnt
    approved_plan: str | None = None  # the annotation foreshard.io/approve-plan
    migration: MigrationSettings = field(default_factory=MigrationSettings)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> QueueSpec:
        meta, spec = body["metadata"], body.get("spec", {})
        template = spec.get("template", {})
        resources = template.get("resources", {})
        storage = template.get("storage") or {}
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            min_shards=int(spec["minShards"]),
            max_shards=int(spec["maxShards"]),
            slots=int(spec.get("slots", 1024)),
            template=ShardTemplate(
                image=template.get("image", DEFAULT_BROKER_IMAGE),
                image_pull_policy=template.get("imagePullPolicy", "IfNotPresent"),
                requests=tuple(sorted((k, str(v)) for k, v in resources.get("requests", {}).items())),
                limits=tuple(sorted((k, str(v)) for k, v in resources.get("limits", {}).items())),
                storage_size=storage.get("size"),
                storage_class=storage.get("storageClassName"),
            ),
            mode=spec.get("scaling", {}).get("mode", "Auto"),
            forecast=ForecastSettings.from_spec(spec.get("forecast", {})),
            scaling=ScalingPolicy.from_spec(spec.get("scaling", {})),
            messages_per_second=_capacity(spec.get("capacity", {})),
            approved_plan=(meta.get("annotations") or {}).get(ANNOTATION_APPROVE_PLAN),
            migration=MigrationSettings.from_spec(spec.get("migration", {})),
        )


def _capacity(capacity: dict[str, Any]) -> float | None:
    rate = capacity.get("messagesPerSecond")
    return None if rate is None else float(rate)
