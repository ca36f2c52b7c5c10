"""Migrations under faults on the local cluster: a scale cycle 3 -> 6 -> 2 shards that the
operator's planner decides from a changing offered load, with the operator, the move's source
broker and its target broker each SIGKILLed at each phase of a move, under live keyed traffic read
by a consumer group.

    DevEnv: local cluster (API server, pod runner, real brokers in shard pods), the operator
    process, and Prometheus (no backfilled history) scraping every broker each second
      -> the queue at 3 shards with forecasting off (minShards 3), so that the preload's burst is
         not load the planner sizes for: a preload of larger messages held by a group that never
         reads (the copies carry bytes)
      -> traffic.Continuous offers OFFERED[3] msg/s through one bootstrap broker and consumes along;
         then ONE patch: minShards 2 (maxShards 6), spec.forecast on (Prometheus, timeScale,
         5 s steps, a 40 s lookback), capacity.messagesPerSecond CAPACITY with HEADROOM 1 (a shard
         planned at half its capacity): the load needs 3 shards; the bench waits until the
         planner's plan says 3, and until the preload has left the brokers' 60 s rate window
         (the placement's slot loads: with the burst in them, 6 shards looked over capacity)
      -> the offered rate rises to OFFERED[6]: the planner (decision.decide in the reconcile pass,
         on the arrivals Prometheus scraped) asks for 6; slots move onto the new shards, one move a
         wave (maxConcurrentMoves 1: every wave is a chance for one kill)
      -> the offered rate falls to OFFERED[2]: after scaleDownStabilization the planner asks for 2;
         slots move off shards 2-5, then replicas drop
      -> meanwhile, for each (victim, phase) in the step's list: a watch on the object sees a move
         recorded in that phase and, within milliseconds, the victim is SIGKILLed: the operator
         (a fresh one is started: no memory but status), or that move's source or target broker
         (the pod runner restarts it on the same port after its crash-loop back-off)
      -> the checker: every acknowledged message once and in per-key order; no data left on the
         removed shards (each one's retained count the last time it answered)

The bench never sets a shard count during the cycle: minShards and maxShards stay 2 and 6, and
`scale_cycle_completed` is 1 only when the planner's own plan (status.plan.targetShards, with
status.shards.desired following) reached 6 while the high rate was offered and then 2 while the low
one was, and each step settled. The table lists what the planner asked for and when, and the
operator's Scaled Events. With a 40 s lookback the forecast has too few backtest origins to vouch
for itself, so decide sizes on the rate Prometheus observed (its reactive path, the plan's `why`
says so); a step in offered load is nothing a forecast could have seen coming anyway.

Finished moves (Done or RolledBack, with pauseMs, fenceMs, settleMs, copiedBytes, copyMs) are
collected by a watch on the object while the bench runs (`Recorder`), so none is missed however
few the status keeps.

A broker kill can lose a consumer's acknowledgement on its way: the key's head is delivered again
right after itself. Those are counted as `redelivered` (at-least-once delivery); any other repeat
is `duplicated`. The pause is what the operator measured per move (`pauseMs`, fence to the target
serving). `pause_p50_ms`/`pause_p99_ms` are over moves during which neither of their brokers was
killed (a move whose target was killed after the source let go waits for the target's restart:
`pause_max_killed_ms`). `move_mb_s` is the bytes the moves copied over the time their copies took
(`copiedBytes` / `copyMs`). With the control plane, Prometheus, up to seven brokers, the client and
the operator on the same cores, the numbers are an upper bound on what a dedicated machine shows.

Prints a table, then ONE JSON line (the last line); writes bench/results/<BENCH_RESULTS_NAME>.{json,txt}.
Environment: BENCH_SLOTS (24), BENCH_KEYS (200), BENCH_PRELOAD_MB (24), BENCH_CAPACITY (40 msg/s
per shard), BENCH_RESULTS_NAME (migration_faults).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchio import keep
from kubernetes import client, config

from foreshard.api.migration import seconds_of
from foreshard.api.names import GROUP, VERSION
from foreshard.localcluster import devenv, traffic
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.devenv import DevEnv
from foreshard.localcluster.movewatch import QueueWatch
from foreshard.localcluster.process import Managed, poll_until
from foreshard_broker.client.broker_client import BrokerClient
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer

SLOTS = int(os.environ.get("BENCH_SLOTS", "24"))
KEYS = int(os.environ.get("BENCH_KEYS", "200"))
PRELOAD_MB = float(os.environ.get("BENCH_PRELOAD_MB", "24"))
NAME = os.environ.get("BENCH_RESULTS_NAME", "migration_faults")  # bench/results/<NAME>.{txt,json}
NAMESPACE, QUEUE = "bench", "moving"
# the operator's cadence on the bench's clock (as the demo's): a pass every second, a forecast
# cycle every 2 s, 3 keys tracked on their own (the rest is the tail series)
OPERATOR_ENV = {
    "FORESHARD_RESYNC_SECONDS": "1",
    "FORESHARD_FORECAST_SECONDS": "2",
    "FORESHARD_TRACKED_KEYS": "3",
}
MIN_SHARDS, MAX_SHARDS = 2, 6
CAPACITY = float(os.environ.get("BENCH_CAPACITY", "40"))  # spec.capacity.messagesPerSecond
# headroom 1: the planner loads a shard to half its capacity at most (the pause target is
# under a load of half the shards' capacity)
HEADROOM = 1.0
PER_SHARD = CAPACITY / (1 + HEADROOM)
STEP_S = 5  # spec.forecast.step: the planner reads the arrivals per 5 s interval
# offered msg/s per wanted shard count, with margins against the next count either way (a killed
# broker delays its own keys, then its producers catch up; Prometheus extrapolates):
# 3: 2.5 shards' worth; 6: 7.5 shards' worth (clamped to maxShards 6; a scale-in from 6 needs
# under 4 shards' worth, and the placement must still fit the load within 6 x CAPACITY, or it
# reports PlanImpossible and moves nothing); 2: under one shard's worth (minShards 2).
OFFERED = {3: 2.5 * PER_SHARD, 6: 7.5 * PER_SHARD, 2: 0.9 * PER_SHARD}
VICTIMS = ("operator", "source", "target")
# (scale to, (victim, phase) kills while that step's moves run)
# One move at a time (maxConcurrentMoves 1): 12 moves out, 16 back, each a chance for one kill.
CYCLE = [
    (6, [(victim, phase) for phase in ("Prepare", "Fence") for victim in VICTIMS] + [("operator", "Switch")]),
    (
        2,
        [("source", "Switch"), ("target", "Switch")] + [(v, p) for p in ("Resume", "Drain") for v in VICTIMS],
    ),
]
RATE_WINDOW_S = 65.0  # a broker's rate window (60 s) and a little
LAGGARD = "laggard"  # a group that never reads: the backlog the moves copy


def progress(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


def queue() -> dict[str, Any]:
    """The queue before the planner takes over: 3 shards, forecasting off."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ShardAllocation",
        "metadata": {"name": QUEUE, "namespace": NAMESPACE},
        "spec": {
            "minShards": 3,
            "maxShards": MAX_SHARDS,
            "slots": SLOTS,
            "capacity": {"messagesPerSecond": CAPACITY},
            "scaling": {
                "mode": "Auto",
                "leadTime": "5s",
                "headroom": HEADROOM,
                "scaleDownStabilization": "20s",
            },
            "template": {"storage": {"size": "1Gi"}},
            "migration": {"maxConcurrentMoves": 1, "pauseBudget": "2s"},
        },
    }


def planner_on(prometheus_url: str) -> dict[str, Any]:
    """The one patch that hands the shard count to the planner (the bench sets none after it)."""
    forecast = {
        "prometheusURL": prometheus_url,
        # a compressed clock as the demo's: 60 s of wall time is 1 h of queue time, the least
        # longHorizon the CRD allows (1 h); 5 s steps, and a lookback of a few of them
        "timeScale": 60,
        "step": f"{STEP_S}s",
        "lookback": "40s",
        "longHorizon": "60s",
        "planningQuantile": 0.9,
    }
    return {"spec": {"minShards": MIN_SHARDS, "maxShards": MAX_SHARDS, "forecast": forecast}}


def status(cluster: LocalCluster) -> dict[str, Any]:
    out = cluster.kubectl("get", "shalloc", QUEUE, "-n", NAMESPACE, "-o", "json", check=False).stdout
    return (json.loads(out) if out else {}).get("status") or {}


def conditions(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in found.get("conditions", [])}


def settled(cluster: LocalCluster, shards: int) -> bool:
    found = status(cluster)
    routing = found.get("routing") or {}
    owners = {int(r["shard"]) for r in routing.get("slotRanges", [])}
    states = conditions(found)
    return (
        owners == set(range(shards))
        and len(routing.get("endpoints", [])) == shards
        and (found.get("shards") or {}).get("desired") == shards
        and states.get("Migrating", {}).get("reason") == "Idle"
        and states.get("Routed", {}).get("status") == "True"
        and states.get("Ready", {}).get("status") == "True"
    )


class Operator:
    """The operator process DevEnv started, then each fresh one after a SIGKILL."""

    def __init__(self, env: DevEnv) -> None:
        assert env.operator is not None, "DevEnv.up() first"
        self.env = env
        self.started = 1
        self.process: Managed = env.operator

    def start(self) -> None:
        self.started += 1
        self.process, _ = devenv.start_operator(
            self.env.kube, self.env.workdir, name=f"operator-{self.started}", env=OPERATOR_ENV
        )

    def kill(self) -> None:
        os.kill(self.process.process.pid, signal.SIGKILL)
        self.process.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process.process.poll() is None:
            self.process.process.terminate()
            self.process.process.wait(timeout=20)


class Recorder:
    """A watch on the queue, in a thread, from start to end: every finished move (Done or
    RolledBack, its last record), and every change of what the planner asks for (plan target,
    desired shards) and of the spec's bounds. A dropped watch resumes from the current state
    (movewatch.QueueWatch)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.began = time.time()
        self.ended: dict[str, dict[str, Any]] = {}
        self.seen: set[str] = set()  # every move id recorded in any phase
        self.epoch = 0  # the last routing epoch recorded
        self.asks: list[dict[str, Any]] = []  # planner changes: t, target, desired, why
        self.bounds: list[tuple[float, int, int]] = []  # (t, minShards, maxShards) as seen
        self.handed = 0.0  # t at which the bench handed the shard count to the planner
        self.lock = threading.Lock()
        api = client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))  # type: ignore[no-untyped-call]
        self.watch = QueueWatch(api, NAMESPACE, QUEUE, self.take)

    def __enter__(self) -> Recorder:
        self.watch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watch.stop(join_s=15)
        self.take(devenv.shard_allocation(self.cluster, NAMESPACE, QUEUE))  # the last word

    def take(self, body: dict[str, Any] | None) -> None:
        if not body:
            return
        spec, found = body.get("spec") or {}, body.get("status") or {}
        plan, shards = found.get("plan") or {}, found.get("shards") or {}
        now = round(time.time() - self.began, 1)
        with self.lock:
            self.bounds.append((now, int(spec.get("minShards", 0)), int(spec.get("maxShards", 0))))
            self.epoch = int((found.get("routing") or {}).get("epoch") or self.epoch)
            for move in found.get("migrations") or []:
                self.seen.add(move["id"])
                if move.get("phase") in ("Done", "RolledBack"):
                    self.ended[move["id"]] = dict(move)
            ask = {"target": plan.get("targetShards"), "desired": shards.get("desired")}
            last = self.asks[-1] if self.asks else {}
            if ask["target"] is not None and any(last.get(k) != v for k, v in ask.items()):
                why = str(plan.get("why", ""))
                self.asks.append({"t": now, **ask, "why": why})

    def reached(self, shards: int, since_t: float) -> bool:
        """The planner's plan asked for `shards` and desired followed, at or after `since_t`."""
        with self.lock:
            return any(
                a["t"] >= since_t and a["target"] == shards and a["desired"] == shards for a in self.asks
            )

    def holding(self, shards: int, for_s: float) -> bool:
        """The planner's latest plan asks for `shards`, desired follows, for `for_s` already."""
        with self.lock:
            last = self.asks[-1] if self.asks else {}
        held = time.time() - self.began - last.get("t", math.inf)
        return last.get("target") == last.get("desired") == shards and held >= for_s

    def bounds_since(self, t: float) -> set[tuple[int, int]]:
        with self.lock:
            return {(low, high) for at, low, high in self.bounds if at > t + 2.0}


def scaled_events(cluster: LocalCluster) -> list[str]:
    """The operator's Scaled Events on the queue, oldest first ("<time> <message>")."""
    out = cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", f"reason=Scaled,involvedObject.name={QUEUE}",
        "-o", "json", check=False,
    ).stdout  # fmt: skip
    items = (json.loads(out) if out else {}).get("items") or []
    stamped = [(e.get("lastTimestamp") or e.get("eventTime") or "", e.get("message", "")) for e in items]
    return [f"{at} {message}" for at, message in sorted(stamped)]


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="foreshard-bench-moves-") as tmp:
        env = DevEnv(Path(tmp), NAMESPACE, operator_env=OPERATOR_ENV)
        progress("starting the local cluster (control plane + pod runner) and the operator")
        env.up(progress)
        operator = Operator(env)
        cluster = env.kube
        try:
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps(queue()))
            progress("waiting for 3 shards Ready and Routed (forecasting off: minShards)")
            poll_until(lambda: settled(cluster, 3), "3 shards settled", 180, interval_s=0.5)
            endpoints = endpoints_of(status(cluster))
            progress(f"preloading {PRELOAD_MB:g} MB held by group {LAGGARD!r}")
            preloaded = asyncio.run(preload(endpoints))
            # after the preload: Prometheus only sees the counters grow from its first scrape on
            url = env.history({}, end_at_s=time.time(), progress=progress)
            # the brokers' slot rates (the placement's loads) average over a 60 s window: until
            # the preload's burst has left it, 6 shards' placement finds the load above capacity
            ready_at = time.monotonic() + RATE_WINDOW_S
            return {**cycle(cluster, operator, endpoints[0], url, ready_at), "preloaded_mb": preloaded}
        finally:
            operator.stop()
            if env.prometheus is not None:
                env.prometheus.stop()
            cluster.stop()


def endpoints_of(found: dict[str, Any]) -> dict[int, str]:
    return {int(e["shard"]): e["endpoint"] for e in (found.get("routing") or {}).get("endpoints", [])}


async def preload(endpoints: dict[int, str]) -> float:
    """Create the never-reading group on every shard, then publish 2 KiB messages over every slot
    (BENCH_PRELOAD_MB=0: neither; only the traffic's own small in-flight backlog moves)."""
    if PRELOAD_MB <= 0:
        return 0.0
    for endpoint in endpoints.values():
        client = BrokerClient(endpoint)
        try:
            await client.create_group(LAGGARD)
        finally:
            await client.close()
    payload = b"preload|" + b"x" * 2048
    count = int(PRELOAD_MB * 1e6 / len(payload))
    transport = GrpcTransport()
    try:
        async with Producer(transport, [endpoints[0]]) as producer:
            for start in range(0, count, 2000):
                batch = range(start, min(count, start + 2000))
                await asyncio.gather(*(producer.send(f"preload-{i % 997}", payload) for i in batch))
    finally:
        await transport.close()
    return round(count * len(payload) / 1e6, 1)


class Retained:
    """Polls every shard's retained count (GetBacklog) in a thread: what each removed shard held
    the last time it answered, before its pod went away."""

    def __init__(self, endpoints: dict[int, str]) -> None:
        self.endpoints = endpoints
        self.last: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._poll()), daemon=True)

    async def _poll(self) -> None:
        # one poller per shard: a dead or restarting shard's timeouts never delay another's
        # reading (a source killed in Drain restarts, releases and is removed within seconds)
        transport = GrpcTransport(call_timeout_s=0.5)
        try:
            await asyncio.gather(*(self._one(transport, s, e) for s, e in self.endpoints.items()))
        finally:
            await transport.close()

    async def _one(self, transport: GrpcTransport, shard: int, endpoint: str) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):  # stopped (or restarting): its last answer stands
                self.last[shard] = await transport.backlog(endpoint)
            await asyncio.sleep(0.2)


def kill(cluster: LocalCluster, operator: Operator, victim: str, move: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL the victim at once (the watch saw `move` recorded in its phase); returns the record."""
    at = time.time()
    if victim == "operator":
        operator.kill()
        recorded = {m["id"]: m for m in status(cluster).get("migrations") or []}.get(move["id"], move)
        operator.start()
        return {
            "victim": victim,
            "seen": move["phase"],
            "phase": recorded["phase"],
            "id": move["id"],
            "at": at,
        }
    shard = int(move[victim])
    pod = f"{QUEUE}-shard-{shard}"
    pid = devenv.kill_broker(cluster, NAMESPACE, pod)
    restarted = pid is not None and devenv.wait_broker_restarted(cluster, NAMESPACE, pod, pid, 90)
    return {
        "victim": victim,
        "shard": shard,
        "seen": move["phase"],
        "phase": move["phase"],
        "id": move["id"],
        "at": at,
        "killed": pid is not None,
        "restarted": restarted,
    }


def cycle(
    cluster: LocalCluster, operator: Operator, bootstrap: str, prometheus_url: str, ready_at: float
) -> dict[str, Any]:
    kills: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    completed = 1
    removed_retained: dict[int, int] = {}
    with (
        Recorder(cluster) as recorder,
        traffic.Continuous(bootstrap, "migration-faults", KEYS, rate=OFFERED[3]) as live,
    ):
        time.sleep(3)
        progress(
            f"offering {OFFERED[3]:.0f} msg/s; handing the shard count to the planner "
            f"(minShards {MIN_SHARDS}, maxShards {MAX_SHARDS}, forecasting on)"
        )
        patch = json.dumps(planner_on(prometheus_url))
        cluster.kubectl("patch", "shalloc", QUEUE, "-n", NAMESPACE, "--type=merge", "-p", patch)
        recorder.handed = time.time() - recorder.began
        try:
            poll_until(
                lambda: recorder.holding(3, 10.0) and settled(cluster, 3),
                "the planner's plan at 3",
                120,
                interval_s=0.5,
            )
        except TimeoutError as timeout:
            progress(str(timeout))
            completed = 0
        time.sleep(max(0.0, ready_at - time.monotonic()))
        for shards, plan in CYCLE if completed else []:
            began, since = time.monotonic(), time.time() - recorder.began
            poller = Retained(endpoints_of(status(cluster)))
            poller.thread.start()
            # on the planner's grid: the first interval it reads at the new rate is all of it (a
            # straddling one would ask for a count in between, 3 -> 4 -> 6)
            time.sleep(STEP_S - time.time() % STEP_S + 0.2)
            live.rate = OFFERED[shards]
            progress(
                f"offering {OFFERED[shards]:.0f} msg/s (the planner should ask for {shards}); "
                f"kills: {', '.join(f'{v}@{p}' for v, p in plan)}"
            )
            for index, (victim, phase) in enumerate(plan):
                hit = {k["id"] for k in kills}  # one kill a move: a retried move is not hit again
                # the first move waits for the planner: Prometheus' next steps, and a scale-in's
                # stabilization
                seen = devenv.watch_migration(cluster, NAMESPACE, QUEUE, {phase}, 60 + 90 * (index == 0), hit)
                if seen is None:
                    progress(f"no move seen in {phase}: the step finished first")
                    continue
                done = kill(cluster, operator, victim, seen)
                kills.append({"step": shards, **done})
                progress(f"{victim} SIGKILLed with move {seen['id']} in {done['phase']}")
            try:
                poll_until(
                    lambda shards=shards, since=since: (
                        settled(cluster, shards) and recorder.reached(shards, since)
                    ),
                    f"the planner's {shards} shards settled",
                    480,
                    interval_s=0.5,
                )
            except TimeoutError as timeout:
                progress(str(timeout))
                completed = 0
            poller.stop.set()
            poller.thread.join(timeout=10)
            if shards < len(poller.endpoints):
                removed_retained.update({s: n for s, n in poller.last.items() if s >= shards})
            seconds = round(time.monotonic() - began, 1)
            steps.append({"to": shards, "offered_msgs_s": round(OFFERED[shards], 1), "seconds": seconds})
            if not completed:
                break
    kept = recorder.bounds_since(recorder.handed) == {(MIN_SHARDS, MAX_SHARDS)}
    completed = int(completed and kept and len(steps) == len(CYCLE))
    return {
        **report(kills, recorder.ended, steps, completed, removed_retained, live),
        "planner_asks": recorder.asks,
        "moves_seen": len(recorder.seen),  # every move recorded; ended ones are in `moves`
        "moves_unfinished": sorted(recorder.seen - set(recorder.ended)),
        "routing_epoch": recorder.epoch,
        "spec_bounds_kept": int(kept),
        "scaled_events": scaled_events(cluster),
    }


def _percentile(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(q * len(values)))], 1) if values else None


def _killed_during(move: dict[str, Any], kills: list[dict[str, Any]]) -> bool:
    """A broker of the move was SIGKILLed between its start and its end."""
    began, ended = seconds_of(move["startedAt"]), seconds_of(move["phaseSince"])
    shards = {int(move["source"]), int(move["target"])}
    return any(
        k["victim"] != "operator" and k["shard"] in shards and began <= k["at"] <= ended for k in kills
    )


def report(
    kills: list[dict[str, Any]],
    ended: dict[str, dict[str, Any]],
    steps: list[dict[str, Any]],
    completed: int,
    removed_retained: dict[int, int],
    live: traffic.Continuous,
) -> dict[str, Any]:
    verdict = live.verdict()
    done = [m for m in ended.values() if m["phase"] == "Done"]
    clean = sorted(float(m["pauseMs"]) for m in done if "pauseMs" in m and not _killed_during(m, kills))
    disturbed = sorted(float(m["pauseMs"]) for m in done if "pauseMs" in m and _killed_during(m, kills))
    fenced = sorted(float(m["fenceMs"]) for m in done if "fenceMs" in m and not _killed_during(m, kills))
    rest = sorted(
        float(m["pauseMs"]) - float(m["fenceMs"])
        for m in done
        if "fenceMs" in m and "pauseMs" in m and not _killed_during(m, kills)
    )
    settle = sorted(float(m["settleMs"]) for m in done if "settleMs" in m and not _killed_during(m, kills))
    copied = sum(int(m.get("copiedBytes", 0)) for m in done)
    copy_s = sum(float(m.get("copyMs", 0.0)) for m in done) / 1000
    outcome = {m["id"]: m["phase"] for m in ended.values()}
    for k in kills:
        k["move_ended"] = outcome.get(k["id"], "in flight")
    return {
        "slots": SLOTS,
        "keys": KEYS,
        "steps": steps,
        "moves": len(done),
        "rolled_back": sum(m["phase"] == "RolledBack" for m in ended.values()),
        "retried_moves": sum(int(m.get("attempt", 1)) > 1 for m in ended.values()),
        "operator_kills": sum(k["victim"] == "operator" for k in kills),
        "broker_kills": sum(k["victim"] != "operator" and k["killed"] for k in kills),
        "source_kills": sum(k["victim"] == "source" and k["killed"] for k in kills),
        "target_kills": sum(k["victim"] == "target" and k["killed"] for k in kills),
        "kills": kills,
        "phases_covered": len({k["phase"] for k in kills}),
        "kill_cases_covered": len({(k["victim"], k["phase"]) for k in kills}),
        **verdict,
        "scale_cycle_completed": completed,
        "removed_shards_retained": removed_retained,
        "pause_p50_ms": round(statistics.median(clean), 1) if clean else None,
        "pause_p99_ms": _percentile(clean, 0.99),
        "pause_max_ms": clean[-1] if clean else None,
        "pause_max_killed_ms": disturbed[-1] if disturbed else None,
        # the pause's profile: fence + delta and group-state import, then record + switch pushes
        "pause_fence_p50_ms": round(statistics.median(fenced), 1) if fenced else None,
        "pause_fence_p99_ms": _percentile(fenced, 0.99),
        "pause_settle_p50_ms": round(statistics.median(settle), 1) if settle else None,
        "pause_settle_p99_ms": _percentile(settle, 0.99),
        "pause_switch_p50_ms": round(statistics.median(rest), 1) if rest else None,
        "pause_switch_p99_ms": _percentile(rest, 0.99),
        "moves_with_a_killed_broker": len(disturbed),
        "copied_mb": round(copied / 1e6, 2),
        "move_mb_s": round(copied / 1e6 / copy_s, 1) if copy_s else None,
        "traffic_msgs_s": round(verdict["acked"] / sum(s["seconds"] for s in steps)) if steps else 0,
        "traffic_error": repr(live.error) if live.error else None,
        # the machine's run queue at the end (2 cores shared with other work: read pauses with it)
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }


def _slash(report: dict[str, Any], *names: str) -> str:
    return " / ".join(str(report[name]) for name in names)


def table(report: dict[str, Any]) -> str:
    r = report
    cases = ", ".join(f"{k['victim']}@{k['phase']}->{k['move_ended']}" for k in r["kills"])
    rows = [
        ("scale cycle (planner-driven)", " -> ".join(["3", *(str(s["to"]) for s in r["steps"])])),
        ("completed / spec bounds kept", _slash(r, "scale_cycle_completed", "spec_bounds_kept")),
        (
            "capacity / headroom / min-max shards",
            f"{CAPACITY:g} msg/s per shard / {HEADROOM:g} / {MIN_SHARDS}-{MAX_SHARDS}",
        ),
        (
            "offered msg/s: 3, then per step",
            ", ".join([f"{OFFERED[3]:.0f}", *(f"{s['offered_msgs_s']:.0f}" for s in r["steps"])]),
        ),
        ("step seconds", ", ".join(str(s["seconds"]) for s in r["steps"])),
        *(
            (f"planner asks at {a['t']:g} s", f"target {a['target']}, desired {a['desired']}: {a['why']}")
            for a in r["planner_asks"]
        ),
        *((f"Scaled Event {i + 1}", event) for i, event in enumerate(r["scaled_events"])),
        ("moves done / rolled back / retried", _slash(r, "moves", "rolled_back", "retried_moves")),
        ("moves recorded (watch) / final epoch", _slash(r, "moves_seen", "routing_epoch")),
        ("SIGKILLs operator / source / target", _slash(r, "operator_kills", "source_kills", "target_kills")),
        ("kill cases (victim@phase->move)", cases),
        ("kill cases covered / phases", _slash(r, "kill_cases_covered", "phases_covered")),
        ("messages acked / received / msg/s", _slash(r, "acked", "received", "traffic_msgs_s")),
        ("lost / duplicated / reordered", _slash(r, "lost", "duplicated", "reordered")),
        ("redelivered (lost acks) / failed", _slash(r, "redelivered", "failed")),
        ("removed shards retained", json.dumps(r["removed_shards_retained"])),
        ("pause p50 / p99 / max ms", _slash(r, "pause_p50_ms", "pause_p99_ms", "pause_max_ms")),
        (
            "pause p50 fence (settle) / switch ms",
            _slash(r, "pause_fence_p50_ms", "pause_settle_p50_ms", "pause_switch_p50_ms"),
        ),
        (
            "pause p99 fence (settle) / switch ms",
            _slash(r, "pause_fence_p99_ms", "pause_settle_p99_ms", "pause_switch_p99_ms"),
        ),
        (
            "broker killed mid-move: moves / max ms",
            _slash(r, "moves_with_a_killed_broker", "pause_max_killed_ms"),
        ),
        ("copied MB / copy MB/s", _slash(r, "copied_mb", "move_mb_s")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> int:
    report = run()
    keep(NAME, table(report), report)
    clean = report["lost"] == report["duplicated"] == report["reordered"] == report["pending"] == 0
    clean = clean and bool(report["finished"]) and not any(report["removed_shards_retained"].values())
    return 0 if clean and report["scale_cycle_completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
