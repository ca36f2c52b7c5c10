"""The forecast loop of one queue, apart from the scaling pass: read -> fit or roll forward -> publish.

    history (incremental, reconcile/history.py) --tracking--> tracked keys + tail + people's OPFs
    per series: refit when due (staggered, fleet.due_for_refit) or roll the fit forward (no refit)
    --> OPF statuses (report.py), OPFs created/deleted (tracking.diff), and one `Published` demand
        that the scaling pass reads instead of fitting (reconcile/shardallocation.py)

Runs in a worker thread (`asyncio.to_thread` in handlers/orderparamforecast.py), and the operator
hands the fits themselves to a child process (adapters/fitprocess.py): a fit takes tens of
milliseconds to seconds of CPU per series and must hold neither kopf's event loop nor the GIL that
the migration pass needs inside a move's pause. Memory between cycles (`QueueMemo`) is
a cache only: OPF statuses are the record, and a restarted operator refits and reaches the same
answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from foreshard.adapters import prometheus
from foreshard.adapters.kube import ForecastPort
from foreshard.adapters.metrics import FORECAST_RATE
from foreshard.api import conditions
from foreshard.api.conditions import Condition
from foreshard.api.consumers import groups_of
from foreshard.api.orderparamforecast import KEY, SLOTS, TAIL, TAIL_KIND, ForecastObject, Target, manifest
from foreshard.api.shardallocation import QueueSpec
from foreshard.core import decision, demand
from foreshard.core.forecasting import (
    Forecast,
    InsufficientHistory,
    ScheduledEvent,
    feedback,
    fleet,
    report,
    tracking,
)
from foreshard.core.planning.consumers import GroupDecision
from foreshard.core.series import Series
from foreshard.reconcile import capacity, consumers
from foreshard.reconcile import history as hist
from foreshard.reconcile.history import HistoryCache, HistoryReader

REFIT_PERIOD = demand.REFIT_PERIOD  # each series is refitted once every 12 cycles, a twelfth per cycle
FRESH_FOR_S = 120.0  # a published demand older than this is not used by the scaling pass
RECENT_STEPS = 12  # intervals of the total handed to the scaling pass (for the observed rate)
QUANTILES = (0.1, 0.5, 0.9, 0.99)
TRUSTED = "Trusted"
DEFAULT_SHORT_S = 900.0  # the short horizon an OPF shows when the queue sets none


FitState = demand.FitState  # the forecast loop's per-series memory lives with demand (the replay's too)


@dataclass
class QueueMemo:
    history: HistoryCache = field(default_factory=HistoryCache)
    fits: dict[str, FitState] = field(default_factory=dict)
    cycle: int = 0


@dataclass(frozen=True)
class Published:
    """What the scaling pass reads: the queue's demand, or why there is none.

    `at_s` is when the history behind it was read (the cycle's start, never later than its reads):
    the board keeps the newest read, whoever made it (`publish`).
    """

    at_s: float
    demand: demand.Demand | None
    recent: Series | None  # the queue total's latest intervals
    problem: str | None = None  # InsufficientHistory message
    unreachable: str | None = None
    capacity: float | None = None  # learnt messages/s per shard (capacity.learn)


@dataclass(frozen=True)
class PassResult:
    published: Published
    create: tuple[dict[str, Any], ...] = ()
    delete: tuple[str, ...] = ()
    statuses: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # OPF name -> status
    groups: tuple[consumers.GroupForecast, ...] = ()
    decisions: tuple[GroupDecision, ...] = ()  # filled by `cycle` (it reads the scale targets)
    learnt: capacity.Learnt | None = None  # capacity.learn's result, when the queue asks for it
    fits: int = 0
    timings: Mapping[str, float] = field(default_factory=dict)


BOARD: dict[tuple[str, str], Published] = {}
Connect = Callable[[str], HistoryReader]


def connect_briefly(url: str) -> HistoryReader:
    return prometheus.connect(url, timeout_s=10, retries=0)


def publish(namespace: str, queue: str, found: Published) -> None:
    """Put `found` on the board unless something read later is there already.

    A forecast cycle and the scaling pass read Prometheus concurrently, and a cycle's fits take
    seconds: a cycle that read its history just before Prometheus went away would otherwise
    publish a ready forecast after a pass had seen the outage, and the queue's conditions would
    say Ready during it. Only a read made after the outage was seen may end it.
    """
    known = BOARD.get((namespace, queue))
    if known is None or known.at_s <= found.at_s:
        BOARD[(namespace, queue)] = found


def current(namespace: str, queue: str, now_s: float) -> Published | None:
    """The latest published demand of a queue, when fresh enough to plan on."""
    found = BOARD.get((namespace, queue))
    return found if found is not None and now_s - found.at_s <= FRESH_FOR_S else None


def plan_inputs(
    spec: QueueSpec, replicas: int, now_s: float
) -> tuple[QueueSpec, decision.Gathered, decision.Estimator] | None:
    """What the scaling pass decides on when the forecast loop has published: no fitting there.

    None when nothing fresh is published (forecasting off, the loop not run yet, or stalled): the
    scaling pass then reads history and fits as before.
    """
    found = current(spec.namespace, spec.name, now_s)
    if found is None:
        return None
    if found.capacity is not None:
        # capacity.learn asked for it: the measurement wins over spec.capacity.messagesPerSecond
        spec = replace(spec, messages_per_second=found.capacity)
    if found.unreachable is not None:
        return spec, decision.Gathered(replicas, unreachable=found.unreachable), _estimator(found)
    recent = {} if found.recent is None else {hist.TOTAL: found.recent}
    return spec, decision.Gathered(replicas, recent), _estimator(found)


def _estimator(found: Published) -> decision.Estimator:
    def estimate(
        history: Mapping[str, Series], now_s: float, horizon_s: float, quantile: float
    ) -> demand.Demand:
        if found.demand is None:
            raise InsufficientHistory(found.problem or "the forecast loop has no forecast for this queue")
        return found.demand

    return estimate


def cycle(
    body: Mapping[str, Any],
    kube: ForecastPort,
    memo: QueueMemo,
    now_s: float,
    connect: Connect = connect_briefly,
    limit: int = tracking.MAX_TRACKED,
    refresh_all: demand.RefreshAll = demand.refresh_all,
) -> PassResult:
    """One cycle with its side effects: OPFs created, deleted and given status; demand published."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    objects = [ForecastObject.from_body(b) for b in kube.list_forecasts(namespace)]
    result = run(body, objects, memo, now_s, connect, limit, refresh_all)
    for created in result.create:
        kube.create_forecast(created)
    for name in result.delete:
        kube.delete_forecast(namespace, name)
    for name, status in result.statuses.items():
        kube.patch_forecast_status(namespace, name, status)
    publish(namespace, meta["name"], result.published)
    found = result.published.demand
    decisions = consumers.act(body, result.groups, None if found is None else found.forecast, kube, now_s)
    return replace(result, decisions=tuple(decisions))


def intake_status(
    body: Mapping[str, Any], queue_exists: Callable[[str, str], bool], now_s: float
) -> dict[str, Any] | None:
    """A new OPF's first status: its queue is missing, or its forecast comes with the next cycle."""
    obj = ForecastObject.from_body(dict(body))
    if obj.status.get("conditions"):
        return None
    if queue_exists(obj.namespace, obj.queue):
        why = Condition(
            conditions.READY, "False", "Pending", f"Waiting for the next forecast cycle of queue {obj.queue}."
        )
    else:
        why = Condition(
            conditions.READY,
            "False",
            "QueueNotFound",
            f"No ShardAllocation {obj.queue} in namespace {obj.namespace}; create it or fix spec.queueRef.",
        )
    return _failed([obj], why, now_s)[obj.name]


def events_of(body: Mapping[str, Any]) -> list[ScheduledEvent]:
    out = []
    for event in (body.get("spec") or {}).get("events") or []:
        keys = event.get("keys") or None
        out.append(
            ScheduledEvent(
                event["name"],
                decision.parse_timestamp(event["start"]),
                decision.parse_timestamp(event["end"]),
                float(event["multiplier"]),
                frozenset(keys) if keys else None,
            )
        )
    return out


def run(
    body: Mapping[str, Any],
    objects: Sequence[ForecastObject],
    memo: QueueMemo,
    now_s: float,
    connect: Connect = connect_briefly,
    limit: int = tracking.MAX_TRACKED,
    refresh_all: demand.RefreshAll = demand.refresh_all,
) -> PassResult:
    """One forecast cycle of a queue; every side effect is returned, none is performed.

    `limit`: how many of the heaviest keys are tracked (forecast alone, with an OPF each).
    `refresh_all`: runs the cycle's fits (here by default; the operator's in a child process).
    """
    spec = QueueSpec.from_body(dict(body))
    mine = [o for o in objects if o.queue == spec.name]
    settings = spec.forecast
    if not settings.prometheus_url:
        why = Condition(
            conditions.READY, "False", "ForecastDisabled", "The queue sets no forecast.prometheusURL."
        )
        return PassResult(Published(now_s, None, None, why.message), statuses=_failed(mine, why, now_s))
    if memo.history.step_s != settings.step_s:
        memo.history, memo.fits = HistoryCache(step_s=settings.step_s), {}
    started = time.perf_counter()
    try:
        reader = connect(settings.prometheus_url)
        series, tracked, backlogs = _read(body, spec, mine, memo, reader, now_s, limit)
        learnt = capacity.learn(spec, body, reader, now_s) if capacity.wanted(body) else None
    except prometheus.PrometheusUnreachable as error:
        why = Condition(
            conditions.READY, "False", "PrometheusUnreachable", f"{error}; keeping the last forecast."
        )
        return PassResult(
            Published(now_s, None, None, unreachable=str(error)), statuses=_failed(mine, why, now_s)
        )
    read_s = time.perf_counter() - started
    diff = tracking.diff(spec.name, tracked, mine)
    groups = groups_of(dict(body))
    targets = [*_targets(spec.name, tracked, mine, diff), *[consumers.series_id(g.name) for g in groups]]
    cpu, wall = time.thread_time(), time.perf_counter()
    forecasts, problems, fits = _forecast_all(
        spec, body, series, targets, memo, now_s, forced_models(mine), refresh_all
    )
    # this thread's CPU: the fits' own when they run here, only the hand-over when in a child
    forecast_cpu_s, forecast_s = time.thread_time() - cpu, time.perf_counter() - wall
    group_forecasts = tuple(
        consumers.GroupForecast(
            g,
            backlogs.get(g.name),
            forecasts.get(consumers.series_id(g.name)),
            problems.get(consumers.series_id(g.name)),
        )
        for g in groups
    )
    published = _publish(spec, series, tracked, forecasts, problems, now_s)
    if learnt is not None and learnt.capacity is not None:
        published = replace(published, capacity=learnt.capacity.messages_per_s)
    statuses = _statuses(spec, mine, diff, targets, series, forecasts, problems, memo, now_s)
    memo.cycle += 1
    timings = {
        "read_s": read_s,
        "forecast_s": forecast_s,
        "forecast_cpu_s": forecast_cpu_s,
        "total_s": time.perf_counter() - started,
    }
    creates = tuple(manifest(dict(body), t) for t in diff.create)
    return PassResult(
        published, creates, diff.delete, statuses, group_forecasts, fits=fits, timings=timings, learnt=learnt
    )


def _read(
    body: Mapping[str, Any],
    spec: QueueSpec,
    mine: Sequence[ForecastObject],
    memo: QueueMemo,
    reader: HistoryReader,
    now_s: float,
    limit: int,
) -> tuple[dict[str, Series], list[str], dict[str, float]]:
    """Series by id (tracked keys, people's OPF targets, the tail, consumer groups' acks), the
    tracked keys, and each consumer group's backlog now."""
    settings, cache = spec.forecast, memo.history
    window = hist.grid(now_s, settings.step_s, settings.lookback_s)
    volumes = hist.ranked(cache, reader, spec.name, window[1], settings.lookback_s)
    events = tracking.event_keys((body.get("spec") or {}).get("events") or [])
    tracked = tracking.wanted(volumes, events, limit)
    ids: dict[str, tuple[str, str]] = {key: ("key", key) for key in tracked}
    ids.update({o.target.key: ("key", o.target.key) for o in mine if o.target.kind == KEY})
    slots = sorted(
        {s for o in mine if o.target.kind == SLOTS for s in range(o.target.start, o.target.end + 1)}
    )
    ids.update({f"slot:{s}": ("slot", str(s)) for s in slots})
    hist.refresh_keys(cache, reader, spec.name, ids, window)
    total = hist.refresh_total(cache, reader, spec.name, window)
    names = [g.name for g in groups_of(dict(body))]
    acks = hist.refresh_acks(cache, reader, spec.name, names, window)
    backlogs = reader.backlogs(spec.name, names, now_s) if names else {}
    hist.forget(cache, [*ids, hist.TOTAL, *[consumers.series_id(n) for n in names]])
    series = {sid: cache.series[sid] for sid in ids if not sid.startswith("slot:")}
    series[TAIL] = tracking.tail(total, [cache.series[k] for k in tracked])
    per_slot = {sid.removeprefix("slot:"): cache.series[sid] for sid in ids if sid.startswith("slot:")}
    for target in {o.target for o in mine if o.target.kind == SLOTS}:
        series[target.series_id] = tracking.slot_range(per_slot, target, total)
    series[hist.TOTAL] = total
    series.update({consumers.series_id(name): found for name, found in acks.items()})
    return series, tracked, backlogs


def _targets(
    queue: str, tracked: Sequence[str], mine: Sequence[ForecastObject], diff: tracking.Diff
) -> list[str]:
    """Series ids to forecast: tracked keys and the tail (always: the plan sums them), and every OPF's."""
    ids = [*tracked, TAIL, *[o.target.series_id for o in mine]]
    return list(dict.fromkeys(ids))


def forced_models(mine: Sequence[ForecastObject]) -> dict[str, tuple[str, ...]]:
    """OPF spec.model by series id: that series is fitted with this model class only (the first
    OPF by name decides when several name one series)."""
    out: dict[str, tuple[str, ...]] = {}
    for obj in sorted(mine, key=lambda o: o.name):
        if obj.model:
            out.setdefault(obj.target.series_id, (obj.model,))
    return out


def _forecast_all(
    spec: QueueSpec,
    body: Mapping[str, Any],
    series: Mapping[str, Series],
    targets: Sequence[str],
    memo: QueueMemo,
    now_s: float,
    forced: Mapping[str, tuple[str, ...]] | None = None,
    refresh_all: demand.RefreshAll = demand.refresh_all,
) -> tuple[dict[str, Forecast], dict[str, str], int]:
    """Forecasts by series id, problems by series id, and how many fits this cycle made.

    Each series is fitted with the model classes of spec.forecast.models, or of its OPF's
    spec.model (`forced`); a change of either refits at once. `refresh_all` runs the cycle's fits
    (the operator's runs them in a child process: adapters/fitprocess.py)."""
    settings = spec.forecast
    due = {targets[i] for i in fleet.due_for_refit(len(targets), memo.cycle, REFIT_PERIOD).tolist()}
    turns = {
        sid: demand.Turn(
            memo.fits.get(sid),
            series[sid],
            # the scaling pass plans on this forecast for up to FRESH_FOR_S: cover that too
            demand.horizon_steps(
                series[sid].end_s, now_s + FRESH_FOR_S, settings.long_horizon_s, settings.step_s
            ),
            sid in due,
            (forced or {}).get(sid, settings.models),
        )
        for sid in targets
    }
    common = demand.Common(
        tuple(sorted({*QUANTILES, settings.planning_quantile})), tuple(events_of(body)), now_s, settings.day_s
    )
    out: dict[str, Forecast] = {}
    problems: dict[str, str] = {}
    fits = 0
    for sid, state in refresh_all(turns, common, time.perf_counter).items():
        if isinstance(state, str):
            problems[sid] = state
            memo.fits.pop(sid, None)
            continue
        before = memo.fits.get(sid)
        # a state that came back from a child process is a copy: a refit shows in its fit time
        fits += before is None or state.fitted_at_s != before.fitted_at_s or state.allowed != before.allowed
        memo.fits[sid] = state
        assert state.forecast is not None  # refresh always leaves one
        out[sid] = state.forecast
    for sid in [s for s in memo.fits if s not in targets]:
        del memo.fits[sid]
    return out, problems, fits


def _publish(
    spec: QueueSpec,
    series: Mapping[str, Series],
    tracked: Sequence[str],
    forecasts: Mapping[str, Forecast],
    problems: Mapping[str, str],
    now_s: float,
) -> Published:
    total = series[hist.TOTAL]
    recent = total.tail(RECENT_STEPS)
    parts = [forecasts[sid] for sid in [*tracked, TAIL] if sid in forecasts]
    if not parts:
        why = problems.get(TAIL) or "Prometheus has no arrivals recorded for this queue yet"
        return Published(now_s, None, recent, problem=why)
    rate = demand.latest_rate([total])
    found = demand.combine(parts, spec.forecast.planning_quantile, rate, len(parts))
    band = demand.band_at(parts, now_s, min(QUANTILES), spec.forecast.planning_quantile)
    if band is not None:  # what the dashboard and the demo's view draw against the arrivals
        for bound, value in zip(("lower", "point", "upper"), band, strict=True):
            FORECAST_RATE.labels(spec.namespace, spec.name, bound).set(round(value, 3))
    return Published(now_s, found, recent)


def _failed(mine: Sequence[ForecastObject], why: Condition, now_s: float) -> dict[str, dict[str, Any]]:
    """Statuses that keep the last forecast and say why it is not being renewed."""
    stamp = report.iso(now_s)
    return {
        o.name: {
            "observedGeneration": o.generation,
            "conditions": conditions.merge(list(o.status.get("conditions") or []), why, stamp, o.generation),
        }
        for o in mine
    }


def _statuses(
    spec: QueueSpec,
    mine: Sequence[ForecastObject],
    diff: tracking.Diff,
    targets: Sequence[str],
    series: Mapping[str, Series],
    forecasts: Mapping[str, Forecast],
    problems: Mapping[str, str],
    memo: QueueMemo,
    now_s: float,
) -> dict[str, dict[str, Any]]:
    from foreshard.api.orderparamforecast import object_name

    existing = {o.name: o for o in mine if o.name not in diff.delete}
    for target in diff.create:
        name = object_name(spec.name, target)
        existing[name] = ForecastObject(name, spec.namespace, spec.name, target, managed=True)
    out = {}
    for name, obj in sorted(existing.items()):
        sid = obj.target.series_id
        out[name] = object_status(
            spec, obj, series.get(sid), forecasts.get(sid), problems.get(sid), memo.fits.get(sid), now_s
        )
    return out


def object_status(
    spec: QueueSpec,
    obj: ForecastObject,
    history: Series | None,
    found: Forecast | None,
    problem: str | None,
    state: FitState | None,
    now_s: float,
) -> dict[str, Any]:
    """The status of one OPF after this cycle."""
    stamp, gen = report.iso(now_s), obj.generation
    previous = list(obj.status.get("conditions") or [])
    if found is None or state is None or history is None:
        ready = Condition(
            conditions.READY, "False", "InsufficientHistory", f"{problem or 'no history'}; no forecast yet."
        )
        return {"observedGeneration": gen, "conditions": conditions.merge(previous, ready, stamp, gen)}
    accuracy = report.Accuracy.from_status(obj.status.get("accuracy") or {})
    if accuracy is None:
        accuracy = report.replay_fit(history, state.fitted, day_s=spec.forecast.day_s)
    else:
        pending = (obj.status.get("accuracy") or {}).get("pending")
        accuracy, _ = report.score(accuracy, pending, history, spec.forecast.day_s)
    sentence, candidates = report.why(state.fitted.name, state.fitted.scores, state.fitted.validation_origins)
    trusted, reasons = _verdict(accuracy)
    short_s = spec.forecast.short_horizon_s or DEFAULT_SHORT_S
    horizons = [
        ("short", float(short_s)),
        ("long", spec.forecast.long_horizon_s),
        *[(f"spec-{i}", h) for i, h in enumerate(obj.horizons_s)],
    ]
    ready = Condition(
        conditions.READY,
        "True",
        "ForecastReady",
        f"{found.model} forecasts {len(found.mean)} steps of {found.step_s:g}s.",
    )
    trust = Condition(TRUSTED, "True" if trusted else "False", reasons, _trust_message(reasons, accuracy))
    merged = conditions.merge(conditions.merge(previous, ready, stamp, gen), trust, stamp, gen)
    return {
        "observedGeneration": gen,
        "model": found.model[:128],
        "why": sentence,
        "candidates": candidates,
        "fittedAt": report.iso(state.fitted_at_s),
        "fitSeconds": round(state.fit_seconds, 4),
        "stepSeconds": found.step_s,
        "horizons": [
            {"name": name, "seconds": seconds, "points": report.horizon_points(found, now_s, seconds)}
            for name, seconds in horizons[:4]
        ],
        "accuracy": accuracy.to_status(report.pending_of(found)),
        "conditions": merged,
    }


def _verdict(accuracy: report.Accuracy) -> tuple[bool, str]:
    flags, reasons = feedback.verdict(accuracy.seasonal)
    return bool(flags[0]), reasons[0]


def _trust_message(reason: str, accuracy: report.Accuracy) -> str:
    ratio = float(accuracy.seasonal.error_ratio[0])
    coverage = float(accuracy.seasonal.coverage[0])
    return (
        f"{reason}: error {ratio:.2f}x the seasonal-naive reference's, p90 covers {coverage:.0%} "
        f"of {int(accuracy.seasonal.observations[0])} scored intervals."
    )


def timestamp_of(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


__all__ = ["BOARD", "TAIL_KIND", "Target", "current", "publish", "run"]
