"""Migrations under faults on the local cluster: a scale cycle 3 -> 6 -> 2 shards with the operator,
the move's source broker and its target broker each SIGKILLed at each phase of a move, under live
keyed traffic read by a consumer group.

    local cluster (API server, pod runner, real brokers in shard pods) + the operator process
      -> a preload of larger messages held by a group that never reads (the copies carry bytes)
      -> traffic.Continuous publishes through one bootstrap broker and consumes along
      -> spec 3 -> 6 shards: slots move onto the new shards, one move a wave (maxConcurrentMoves 1:
         every wave is a chance for one kill)
      -> spec 6 -> 2 shards: slots move off shards 2-5, then replicas drop
      -> meanwhile, for each (victim, phase) in the step's list: a watch on the object sees a move
         recorded in that phase and, within milliseconds, the victim is SIGKILLed: the operator
         (a fresh one is started: no memory but status), or that move's source or target broker
         (the pod runner restarts it on the same port after its crash-loop back-off)
      -> the checker: every acknowledged message once and in per-key order; no data left on the
         removed shards (each one's retained count the last time it answered)

A broker kill can lose a consumer's acknowledgement on its way: the key's head is delivered again
right after itself. Those are counted as `redelivered` (at-least-once delivery); any other repeat
is `duplicated`. The pause is what the operator measured per move (`pauseMs`, fence to the target
serving). `pause_p50_ms`/`pause_p99_ms` are over moves during which neither of their brokers was
killed (a move whose target was killed after the source let go waits for the target's restart:
`pause_max_killed_ms`). `move_mb_s` is the bytes the moves copied over the time their copies took
(`copiedBytes` / `copyMs`). With the control plane, up to seven brokers, the client and the operator
on the same cores, the numbers are an upper bound on what a dedicated machine shows.

Prints a table, then ONE JSON line (the last line); writes bench/results/migration_faults.{json,txt}.
Environment: BENCH_SLOTS (24), BENCH_KEYS (200), BENCH_PRELOAD_MB (24), BENCH_RESULTS_NAME.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from foreshard.api.migration import seconds_of
from foreshard.localcluster import devenv, traffic
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.process import Managed
from foreshard_broker.client.broker_client import BrokerClient
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer

RESULTS = Path(__file__).resolve().parent / "results"
SLOTS = int(os.environ.get("BENCH_SLOTS", "24"))
KEYS = int(os.environ.get("BENCH_KEYS", "200"))
PRELOAD_MB = float(os.environ.get("BENCH_PRELOAD_MB", "24"))
NAME = os.environ.get("BENCH_RESULTS_NAME", "migration_faults")  # bench/results/<NAME>.{txt,json}
NAMESPACE, QUEUE = "bench", "moving"
OPERATOR_ENV = {"FORESHARD_RESYNC_SECONDS": "1"}
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
LAGGARD = "laggard"  # a group that never reads: the backlog the moves copy


def progress(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


def queue(shards: int) -> dict[str, Any]:
    return {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": QUEUE, "namespace": NAMESPACE},
        "spec": {
            "minShards": shards,
            "maxShards": shards,
            "slots": SLOTS,
            "template": {"storage": {"size": "1Gi"}},
            "migration": {"maxConcurrentMoves": 1, "pauseBudget": "2s"},
        },
    }


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


def wait(predicate: Any, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


class Operator:
    def __init__(self, cluster: LocalCluster, workdir: Path) -> None:
        self.cluster, self.workdir = cluster, workdir
        self.started = 0
        self.process: Managed | None = None

    def start(self) -> None:
        self.started += 1
        self.process, _ = devenv.start_operator(
            self.cluster, self.workdir, name=f"operator-{self.started}", env=OPERATOR_ENV
        )

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.process.pid, signal.SIGKILL)
        self.process.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.process.poll() is None:
            self.process.process.terminate()
            self.process.process.wait(timeout=20)


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="foreshard-bench-moves-") as tmp:
        workdir = Path(tmp)
        cluster = LocalCluster(workdir / "cluster", preferred_ports=False)
        progress("starting the local cluster (control plane + pod runner)")
        cluster.start()
        operator = Operator(cluster, workdir)
        try:
            devenv.install(cluster, NAMESPACE)
            operator.start()
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps(queue(3)))
            progress("waiting for 3 shards Ready and Routed")
            wait(lambda: settled(cluster, 3), "3 shards settled", 180)
            endpoints = endpoints_of(status(cluster))
            progress(f"preloading {PRELOAD_MB:g} MB held by group {LAGGARD!r}")
            preloaded = asyncio.run(preload(endpoints))
            return {**cycle(cluster, operator, endpoints[0]), "preloaded_mb": preloaded}
        finally:
            operator.stop()
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
        transport = GrpcTransport(call_timeout_s=1.0)
        try:
            while not self.stop.is_set():
                for shard, endpoint in self.endpoints.items():
                    try:
                        self.last[shard] = await transport.backlog(endpoint)
                    except Exception:  # stopped (or restarting): its last answer stands
                        continue
                await asyncio.sleep(0.3)
        finally:
            await transport.close()


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


def cycle(cluster: LocalCluster, operator: Operator, bootstrap: str) -> dict[str, Any]:
    kills: list[dict[str, Any]] = []
    ended: dict[str, dict[str, Any]] = {}
    steps: list[dict[str, Any]] = []
    completed = 1
    removed_retained: dict[int, int] = {}
    with traffic.Continuous(bootstrap, "migration-faults", KEYS) as live:
        time.sleep(3)
        for shards, plan in CYCLE:
            began = time.monotonic()
            poller = Retained(endpoints_of(status(cluster)))
            poller.thread.start()
            progress(f"scaling to {shards} shards; kills: {', '.join(f'{v}@{p}' for v, p in plan)}")
            patch = {"spec": {"minShards": shards, "maxShards": shards}}
            cluster.kubectl(
                "patch", "shalloc", QUEUE, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch)
            )
            for victim, phase in plan:
                hit = {k["id"] for k in kills}  # one kill a move: a retried move is not hit again
                seen = devenv.watch_migration(cluster, NAMESPACE, QUEUE, {phase}, 60, hit)
                if seen is None:
                    progress(f"no move seen in {phase}: the step finished first")
                    continue
                done = kill(cluster, operator, victim, seen)
                kills.append({"step": shards, **done})
                progress(f"{victim} SIGKILLed with move {seen['id']} in {done['phase']}")
            try:
                wait(lambda shards=shards: settled(cluster, shards), f"{shards} shards settled", 420)
            except SystemExit as timeout:
                progress(str(timeout))
                completed = 0
            poller.stop.set()
            poller.thread.join(timeout=10)
            if shards < len(poller.endpoints):
                removed_retained.update({s: n for s, n in poller.last.items() if s >= shards})
            for m in status(cluster).get("migrations") or []:
                if m["phase"] in ("Done", "RolledBack"):
                    ended[m["id"]] = m
            steps.append({"to": shards, "seconds": round(time.monotonic() - began, 1)})
            if not completed:
                break
    return report(kills, ended, steps, completed, removed_retained, live)


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
        ("scale cycle", " -> ".join(["3", *(str(s["to"]) for s in r["steps"])])),
        ("step seconds", ", ".join(str(s["seconds"]) for s in r["steps"])),
        ("moves done / rolled back / retried", _slash(r, "moves", "rolled_back", "retried_moves")),
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
    text = table(report)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.txt").write_text(text + "\n")
    (RESULTS / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    clean = report["lost"] == report["duplicated"] == report["reordered"] == report["pending"] == 0
    clean = clean and bool(report["finished"]) and not any(report["removed_shards_retained"].values())
    return 0 if clean and report["scale_cycle_completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
