"""Migrations under faults on the local cluster: a scale cycle 3 -> 6 -> 2 shards with the operator
SIGKILLed at each phase of a move, under live keyed traffic read by a consumer group.

    local cluster (API server, pod runner, real brokers in shard pods) + the operator process
      -> traffic.Continuous publishes through one bootstrap broker and consumes along
      -> spec 3 -> 6 shards: slots move onto the new shards, in waves
      -> spec 6 -> 2 shards: slots move off shards 2-5, then replicas drop
      -> meanwhile, for each phase in PHASES: a watch on the object sees a move recorded in that
         phase, the operator is SIGKILLed at once and a fresh one started (no memory but status)
      -> the checker: every acknowledged message once and in per-key order

Not covered here: broker kills (tests/component/test_migration_kills.py kills source and target at
each phase of the same protocol). The pause is what the operator measured per move (`pauseMs`,
fence to the target serving); with the control plane, 2-7 brokers, the client and the operator on
the same cores it is an upper bound on what a dedicated machine shows.

Prints a table, then ONE JSON line (the last line); writes bench/results/migration_faults.{json,txt}.
Environment: BENCH_SLOTS (24), BENCH_KEYS (200).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from foreshard.localcluster import devenv, traffic
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.process import Managed

RESULTS = Path(__file__).resolve().parent / "results"
SLOTS = int(os.environ.get("BENCH_SLOTS", "24"))
KEYS = int(os.environ.get("BENCH_KEYS", "200"))
NAMESPACE, QUEUE = "bench", "moving"
OPERATOR_ENV = {"FORESHARD_RESYNC_SECONDS": "1"}
# (scale to, phases to kill the operator at while that step's moves run)
CYCLE = [(6, ("Prepare", "Fence", "Switch")), (2, ("Resume", "Drain", "Fence"))]


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
            "migration": {"maxConcurrentMoves": 4, "pauseBudget": "2s"},
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
            bootstrap = next(
                e["endpoint"] for e in status(cluster)["routing"]["endpoints"] if int(e["shard"]) == 0
            )
            return cycle(cluster, operator, bootstrap)
        finally:
            operator.stop()
            cluster.stop()


def cycle(cluster: LocalCluster, operator: Operator, bootstrap: str) -> dict[str, Any]:
    kills: list[dict[str, Any]] = []
    ended: dict[str, dict[str, Any]] = {}
    steps: list[dict[str, Any]] = []
    completed = 1
    with traffic.Continuous(bootstrap, "migration-faults", KEYS) as live:
        time.sleep(3)
        for shards, phases in CYCLE:
            began = time.monotonic()
            progress(f"scaling to {shards} shards; killing the operator at {', '.join(phases)}")
            patch = {"spec": {"minShards": shards, "maxShards": shards}}
            cluster.kubectl(
                "patch", "shalloc", QUEUE, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch)
            )
            for phase in phases:
                seen = devenv.watch_migration(cluster, NAMESPACE, QUEUE, {phase}, 60)
                if seen is None:
                    progress(f"no move seen in {phase}: the step finished first")
                    continue
                operator.kill()
                recorded = {m["id"]: m for m in status(cluster).get("migrations") or []}.get(seen["id"], seen)
                kills.append({"step": shards, "seen": phase, "recorded_at_kill": recorded["phase"]})
                progress(f"operator SIGKILLed with move {seen['id']} recorded in {recorded['phase']}")
                operator.start()
            try:
                wait(lambda shards=shards: settled(cluster, shards), f"{shards} shards settled", 420)
            except SystemExit as timeout:
                progress(str(timeout))
                completed = 0
            for m in status(cluster).get("migrations") or []:
                if m["phase"] in ("Done", "RolledBack"):
                    ended[m["id"]] = m
            steps.append({"to": shards, "seconds": round(time.monotonic() - began, 1)})
            if not completed:
                break
    verdict = live.verdict()
    done = [m for m in ended.values() if m["phase"] == "Done"]
    pauses = sorted(float(m["pauseMs"]) for m in done if "pauseMs" in m)
    return {
        "slots": SLOTS,
        "keys": KEYS,
        "steps": steps,
        "moves": len(done),
        "rolled_back": sum(m["phase"] == "RolledBack" for m in ended.values()),
        "operator_kills": len(kills),
        "broker_kills": 0,
        "kills": kills,
        "phases_covered": len({k["recorded_at_kill"] for k in kills}),
        **verdict,
        "scale_cycle_completed": completed,
        "pause_p50_ms": round(statistics.median(pauses), 1) if pauses else None,
        "pause_p99_ms": round(pauses[min(len(pauses) - 1, int(0.99 * len(pauses)))], 1) if pauses else None,
        "pause_max_ms": round(pauses[-1], 1) if pauses else None,
        "traffic_error": repr(live.error) if live.error else None,
    }


def table(report: dict[str, Any]) -> str:
    rows = [
        ("scale cycle", " -> ".join(["3", *(str(s["to"]) for s in report["steps"])])),
        ("step seconds", ", ".join(str(s["seconds"]) for s in report["steps"])),
        ("moves done / rolled back", f"{report['moves']} / {report['rolled_back']}"),
        ("operator SIGKILLs", str(report["operator_kills"])),
        ("killed at (recorded phase)", ", ".join(k["recorded_at_kill"] for k in report["kills"])),
        ("messages acked / received", f"{report['acked']} / {report['received']}"),
        (
            "lost / duplicated / reordered",
            f"{report['lost']} / {report['duplicated']} / {report['reordered']}",
        ),
        (
            "pause p50 / p99 / max ms",
            f"{report['pause_p50_ms']} / {report['pause_p99_ms']} / {report['pause_max_ms']}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> int:
    report = run()
    text = table(report)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "migration_faults.txt").write_text(text + "\n")
    (RESULTS / "migration_faults.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    clean = report["lost"] == report["duplicated"] == report["reordered"] == report["pending"] == 0
    clean = clean and bool(report["finished"])
    return 0 if clean and report["scale_cycle_completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
