"""The main job, end to end: a trace's history backfilled, its next stretch replayed live through
the operator's shards, watched, judged and reported. Shared by `foreshard demo`,
`bench/e2e_replay.py` and the end-to-end test, all on one `DevEnv`.

    DevEnv.up()  -> queue (forecasting off, minShards) Ready and Routed
      -> t0 a few steps ahead; the trace's history (compressed) backfilled to end at t0; Prometheus
      -> spec.forecast on (step, lookback, horizons, timeScale on the compressed clock)
      -> at t0: LiveReplay publishes the plan and consumes it; every SAMPLE_S a Sample of the queue
         (shards, epoch, moves, the operator's forecast, arrivals, backlog, prefetch buffer)
      -> drain, per-key verdict, judgement (ramps met ahead, shard-hours vs the HPA formula)

Time compression is one factor (`Clock.scale`, the queue's spec.forecast.timeScale) applied to the
history, the forecast step and horizons, lead time and stabilization alike, so the operator faces
the shape it forecast (docs/design/20261207-demo-replay.md).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from foreshard import traces
from foreshard.api.names import GROUP, SHARD_ALLOCATIONS, VERSION
from foreshard.core.simulation import replay
from foreshard.localcluster import devenv
from foreshard.localcluster.devenv import DevEnv
from foreshard.localcluster.livereplay import LiveReplay
from foreshard.localcluster.movewatch import MoveWatch, pause_profile
from foreshard.localcluster.process import poll_until

SAMPLE_S = 1.0
GROUP_NAME = "replay-check"
# the operator's cadence on a compressed clock: a pass every second, a forecast every 2 s
OPERATOR_ENV = {
    "FORESHARD_RESYNC_SECONDS": "1",
    "FORESHARD_FORECAST_SECONDS": "2",
    "FORESHARD_TRACKED_KEYS": "3",
}


@dataclass(frozen=True)
class Settings:
    traces: Path  # a canonical trace directory: one CSV per key
    hours: float = 24.0  # trace hours replayed live
    speed: float = 144.0  # trace seconds per wall second (144: a day in ten minutes)
    history_days: float = 7.0
    start_hour: float = 4.0  # trace hour of day the replay starts at (after history_days)
    fanout: int = 0  # sub-keys per trace key; 0: about 24 keys in all
    peak_shards: int = 5  # the replay's peak needs this many shards
    capacity: float = 100.0  # messages/s per shard (spec.capacity.messagesPerSecond)
    headroom: float = 0.2
    lead_s: float = 15.0  # wall seconds: a shard pod starts and takes its slots
    stabilization_trace_s: float = 1800.0
    slots: int = 64
    min_shards: int = 1
    max_shards: int = 8
    namespace: str = "demo"
    queue: str = "replay"

    def key_fanout(self, keys: int) -> int:
        return self.fanout or max(1, round(24 / keys))


@dataclass
class Sample:
    t: float  # wall seconds since the replay began
    desired: int
    ready: int
    epoch: int
    moves_in_flight: int
    phases: str
    forecast: float | None  # the operator's forecast rate (msg/s) for the current step
    lower: float | None
    upper: float | None
    planned: float  # the plan's rate (msg/s) at this moment
    published_rate: float  # sends issued per second since the previous sample
    consumed_rate: float
    backlog: int
    buffered: int
    prefetch_target: float
    out_of_order: int  # deliveries so far at or below their key's last sequence (dup or reordered)
    behind_s: float


@dataclass
class Outcome:
    settings: dict[str, Any]
    plan: replay.Plan
    samples: list[Sample] = field(default_factory=list)
    moves: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> last seen, + firstSeen
    verdict: dict[str, Any] = field(default_factory=dict)
    # moves the operator counted done during the replay (its moves_total), to check none was missed
    operator_moves: int | None = None
    judgement: replay.Judgement | None = None
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        done = [m for m in self.moves.values() if m.get("phase") == "Done"]
        profile = pause_profile(done)
        j = self.judgement
        fraction = j.ramps_scaled_ahead_fraction if j else None
        return {
            "trace": Path(self.settings["traces"]).name,
            "hours": self.settings["hours"],
            "speed": round(self.plan.clock.scale, 3),
            "wall_step_s": self.plan.clock.wall_step_s,
            "replay_wall_s": round(self.plan.duration_s, 1),
            "messages": self.verdict.get("messages", 0),
            "keys": len(self.plan.keys),
            "peak_rate": round(float(self.plan.rates.max()), 1),
            "ramps": j.ramps if j else 0,
            "ramps_scaled_ahead": j.ramps_scaled_ahead if j else 0,
            "ramps_scaled_ahead_fraction": None if fraction is None else round(fraction, 3),
            "lost": self.verdict.get("lost"),
            "duplicated": self.verdict.get("duplicated"),
            "reordered": self.verdict.get("reordered"),
            "failed": self.verdict.get("failed"),
            "failure_reasons": self.verdict.get("failure_reasons") or {},
            "drained": self.verdict.get("drained"),
            "moves": len(done),
            "moves_counted_by_operator": self.operator_moves,
            "rolled_back": sum(m.get("phase") == "RolledBack" for m in self.moves.values()),
            **profile,
            "max_shards": max((s.ready for s in self.samples), default=0),
            "shard_hours": round(j.shard_hours, 2) if j else None,
            "hpa_shard_hours": round(j.hpa_shard_hours, 2) if j else None,
            "hpa_violation_minutes": round(j.hpa_violation_minutes, 1) if j else None,
            "max_producer_lag_s": round(max((s.behind_s for s in self.samples), default=0.0), 2),
            "wall_s": round(self.wall_s, 1),
        }

    @property
    def clean(self) -> bool:
        v = self.verdict
        return bool(v) and v["lost"] == v["duplicated"] == v["reordered"] == 0 and bool(v["drained"])


def make_plan(settings: Settings) -> replay.Plan:
    series = traces.read_directory(settings.traces)
    start, step, _ = replay.aligned(series)
    clock = replay.clock_for(step, settings.speed)
    history_s = settings.history_days * replay.DAY_S
    begin = replay.first_midnight_after(start, history_s) + settings.start_hour * 3600.0
    peak = settings.peak_shards * settings.capacity / (1.0 + settings.headroom) * 0.95
    fanout = settings.key_fanout(len(series))
    return replay.plan(series, clock, begin, history_s, settings.hours * 3600.0, fanout, peak)


def queue_body(settings: Settings) -> dict[str, Any]:
    """The queue before forecasting is switched on: minShards shards, routed."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ShardAllocation",
        "metadata": {"name": settings.queue, "namespace": settings.namespace},
        "spec": {
            "minShards": settings.min_shards,
            "maxShards": settings.max_shards,
            "slots": settings.slots,
            "capacity": {"messagesPerSecond": settings.capacity},
            "template": {"storage": {"size": "1Gi"}},
            # the CRD's default pause budget: a fence waits at most half of it for the deliveries
            # the group's prefetch holds (the rest is redelivered in order by the new owner)
            "migration": {"maxConcurrentMoves": 16, "pauseBudget": "500ms"},
        },
    }


def forecast_spec(settings: Settings, clock: replay.Clock, prometheus_url: str) -> dict[str, Any]:
    """spec.forecast and spec.scaling on the compressed clock (every duration divided by the scale)."""
    scale = clock.scale
    step = int(clock.wall_step_s)
    forecast: dict[str, Any] = {
        "prometheusURL": prometheus_url,
        "timeScale": round(scale),
        "step": f"{step}s",
        "lookback": f"{int(settings.history_days * replay.DAY_S / scale)}s",
        "longHorizon": f"{max(step, math.ceil(7200 / scale))}s",
        "planningQuantile": 0.9,
    }
    short = math.floor(900 / scale)  # 15 trace minutes, the CRD's upper bound
    if short >= step:  # a 30-minute trace has no 15-minute horizon: scale-out then plans on the long one
        forecast["shortHorizon"] = f"{short}s"
    return {
        "forecast": forecast,
        "scaling": {
            "mode": "Auto",
            "leadTime": f"{settings.lead_s:g}s",
            "headroom": settings.headroom,
            "scaleDownStabilization": f"{max(1, round(settings.stabilization_trace_s / scale))}s",
        },
    }


class QueueReader:
    """Reads the queue's status and the operator's metrics (one sample; no decisions)."""

    def __init__(self, env: DevEnv, settings: Settings) -> None:
        self.env, self.settings = env, settings
        api_client = config.new_client_from_config(str(env.kube.kubeconfig))  # type: ignore[no-untyped-call]
        self.api = client.CustomObjectsApi(api_client)
        self.last: dict[str, Any] = {}

    def body(self) -> dict[str, Any]:
        """The queue's body; the last one read when the API server does not answer this once (a
        loaded machine), so one slow read never records a queue with no shards."""
        s = self.settings
        try:
            found: Any = self.api.get_namespaced_custom_object(
                GROUP, VERSION, s.namespace, SHARD_ALLOCATIONS, s.queue, _request_timeout=5
            )
        except (ApiException, OSError, urllib3.exceptions.HTTPError):
            return self.last
        self.last = dict(found)
        return self.last

    def _metrics(self) -> str:
        try:
            with urllib.request.urlopen(self.env.operator_metrics, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    def moves_done(self) -> int | None:
        """The operator's count of moves finished Done on this queue (None: metrics unreadable)."""
        text = self._metrics()
        if not text:
            return None
        pattern = re.compile(r"^foreshard_operator_moves_total\{(.*)\} (\S+)$", re.M)
        for labels, value in pattern.findall(text):
            parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if parsed.get("queue") == self.settings.queue and parsed.get("result") == "done":
                return int(float(value))
        return 0

    def forecast(self) -> dict[str, float]:
        text = self._metrics()
        out = {}
        pattern = re.compile(r"^foreshard_operator_forecast_messages_per_second\{(.*)\} (\S+)$", re.M)
        for labels, value in pattern.findall(text):
            parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if parsed.get("queue") == self.settings.queue:
                out[parsed["bound"]] = float(value)
        return out


def run(
    env: DevEnv,
    settings: Settings,
    on_sample: Callable[[Outcome, Sample], None] = lambda _o, _s: None,
    progress: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Replay `settings` on a started DevEnv (namespace installed, operator running)."""
    began = time.monotonic()
    plan = make_plan(settings)
    outcome = Outcome({**asdict(settings), "traces": str(settings.traces)}, plan)
    cluster = env.kube
    cluster.kubectl(
        "delete", "shardallocation", settings.queue, "-n", settings.namespace, "--wait=true", check=False
    )
    poll_until(lambda: not _pods(env, settings), "the previous run's shard pods to go", 120, interval_s=0.5)
    # and their data: a new queue starts empty (its routing epochs start again at 1)
    cluster.kubectl("delete", "pvc", "--all", "-n", settings.namespace, "--wait=true", check=False)
    progress(
        f"creating queue {settings.namespace}/{settings.queue}: "
        f"{settings.min_shards} shard(s), forecasting off"
    )
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(queue_body(settings)))
    table = poll_until(
        lambda: devenv.routed(cluster, settings.namespace, settings.queue),
        "the queue routed",
        180,
        interval_s=0.5,
    )
    wall = plan.clock.wall_step_s
    t0 = math.ceil((time.time() + 12.0) / wall) * wall
    progress(
        f"backfilling {settings.history_days:g} trace days of history ({len(plan.keys)} keys) ending at the "
        f"replay's start, compressed {plan.clock.scale:g}x"
    )
    url = env.history({settings.queue: plan.history}, end_at_s=t0, progress=progress)
    patch = {"spec": forecast_spec(settings, plan.clock, url)}
    cluster.kubectl(
        "patch", "shardallocation", settings.queue, "-n", settings.namespace, "--type=merge",
        "-p", json.dumps(patch),
    )  # fmt: skip
    bootstrap = sorted(table.endpoints.items())[0][1]
    watch = QueueReader(env, settings)
    progress(
        f"replaying {settings.hours:g} trace hours in {plan.duration_s:.0f} s: {len(plan.keys)} keys, "
        f"peak {plan.rates.max():.0f} msg/s"
    )
    counted = watch.moves_done()
    with (
        MoveWatch(watch.api, settings.namespace, settings.queue, t0) as moves,
        LiveReplay(plan, bootstrap, GROUP_NAME, t0) as live,
    ):
        _sample_until(outcome, live, watch, moves, t0, on_sample)
    outcome.moves = moves.moves()
    after = watch.moves_done()
    outcome.operator_moves = None if counted is None or after is None else after - counted
    outcome.verdict = live.verdict()
    times = np.array([s.t for s in outcome.samples])
    ready = np.array([float(s.ready) for s in outcome.samples])
    outcome.judgement = replay.judge(
        plan, settings.capacity, settings.headroom, settings.lead_s, times, ready
    )
    outcome.wall_s = time.monotonic() - began
    return outcome


def _sample_until(
    outcome: Outcome,
    live: LiveReplay,
    watch: QueueReader,
    moves: MoveWatch,
    t0: float,
    on_sample: Callable[[Outcome, Sample], None],
) -> None:
    plan = outcome.plan
    last = (time.time(), 0, 0)
    while live.alive():
        time.sleep(SAMPLE_S)
        now = time.time()
        stats = live.stats()
        body = watch.body()
        status = body.get("status") or {}
        moves.record(status.get("migrations") or [], now)  # beside the watch, in case it reconnects
        outcome.moves = moves.moves()  # the live view reads them
        in_flight = [m for m in status.get("migrations") or [] if m["phase"] not in ("Done", "RolledBack")]
        bands = watch.forecast()
        elapsed = now - last[0]
        index = int((now - t0) // plan.clock.wall_step_s)
        planned = float(plan.rates[index]) if 0 <= index < plan.steps else 0.0
        sample = Sample(
            t=round(now - t0, 2),
            desired=int((status.get("shards") or {}).get("desired") or 0),
            ready=int((status.get("shards") or {}).get("ready") or 0),
            epoch=int((status.get("routing") or {}).get("epoch") or 0),
            moves_in_flight=len(in_flight),
            phases=",".join(sorted({m["phase"] for m in in_flight})),
            forecast=bands.get("point"),
            lower=bands.get("lower"),
            upper=bands.get("upper"),
            planned=planned,
            published_rate=(stats.published - last[1]) / elapsed,
            consumed_rate=(stats.consumed - last[2]) / elapsed,
            backlog=stats.backlog,
            buffered=stats.buffered,
            prefetch_target=stats.prefetch_target,
            out_of_order=live.out_of_order,
            behind_s=stats.behind_s,
        )
        last = (now, stats.published, stats.consumed)
        if now >= t0:
            outcome.samples.append(sample)
        on_sample(outcome, sample)


def _pods(env: DevEnv, settings: Settings) -> list[str]:
    out = env.kube.kubectl(
        "get", "pods", "-n", settings.namespace, "-l", f"foreshard.io/queue={settings.queue}", "-o", "name",
        check=False,
    )  # fmt: skip
    return out.stdout.split()
