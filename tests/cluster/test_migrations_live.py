"""Crash-safe migrations in the live operator: real API server, pod runner, brokers, the operator.

A 2-shard queue (16 slots, so a wave is a handful of moves) is scaled to 4 shards and back to 2
while keyed traffic flows through one bootstrap broker and a consumer group reads along. The
operator moves slots onto the new shards (each ends up owning some, every broker serves the final
epoch), then off shards 2 and 3 before the StatefulSet drops them. Then the operator is SIGKILLed
while a move is in Fence or Switch (a watch on the object sees the phase the moment it is
recorded) and a new operator resumes or rolls the move back. Last, back to 2 shards one move at a
time while the move's source or target broker is SIGKILLed the moment a watch sees the move
recorded in a phase (the pod runner restarts it on the same port); each move rolls back and is
retried, or rolls forward. The per-key checker proves every acknowledged message arrived once and
in order (a broker kill may lose a consumer's ack: that key's head is then delivered again right
after itself, counted as `redelivered`, never as a duplicate or a reordering). Last, a second
queue goes 2 -> 4 -> 2 with its bounds left alone: the planner decides from the offered rate
(Prometheus scraping the brokers, no history), as bench/migration_faults.py's cycle does.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from operator_helpers import NAMESPACE, get, install, running_operator, scrape, wait_for

from foreshard.adapters.brokers import GrpcBrokers
from foreshard.localcluster import devenv, traffic
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.devenv import DevEnv

pytestmark = pytest.mark.cluster

QUEUE = "moving"
SLOTS = 16
KEYS = 200
# a pass every second; the forecast loop every 2 s (the planner-driven test reads Prometheus)
OPERATOR_ENV = {
    "FORESHARD_RESYNC_SECONDS": "1",
    "FORESHARD_FORECAST_SECONDS": "2",
    "FORESHARD_TRACKED_KEYS": "3",
}


def queue_body() -> dict[str, Any]:
    return {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": QUEUE, "namespace": NAMESPACE},
        "spec": {
            "minShards": 2,
            "maxShards": 2,
            "slots": SLOTS,
            "template": {"storage": {"size": "1Gi"}},
            # a loaded 2-core machine: the budget leaves room, the test is about crash safety
            "migration": {"maxConcurrentMoves": 4, "pauseBudget": "2s"},
        },
    }


def condition(body: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next(
        (c for c in ((body or {}).get("status") or {}).get("conditions", []) if c["type"] == kind), {}
    )


def status(cluster: LocalCluster, name: str = QUEUE) -> dict[str, Any]:
    return (get(cluster, "shardallocation", name) or {}).get("status") or {}


def owners(found: dict[str, Any]) -> set[int]:
    routing = found.get("routing") or {}
    return {int(r["shard"]) for r in routing.get("slotRanges", [])} | {
        int(p["shard"]) for p in routing.get("pins", [])
    }


def endpoints(found: dict[str, Any]) -> dict[int, str]:
    return {int(e["shard"]): e["endpoint"] for e in (found.get("routing") or {}).get("endpoints", [])}


MIGRATING_SEEN: list[str] = []  # the Migrating condition's messages while waiting, for the asserts


def settled(cluster: LocalCluster, shards: int, name: str = QUEUE) -> bool:
    """`shards` shards, each owning slots, all Routed at the recorded epoch, no move in flight."""
    body = get(cluster, "shardallocation", name)
    found = (body or {}).get("status") or {}
    MIGRATING_SEEN.append(condition(body, "Migrating").get("message", ""))
    if owners(found) != set(range(shards)) or len(endpoints(found)) != shards:
        return False
    if (
        condition(body, "Migrating").get("reason") != "Idle"
        or condition(body, "Routed").get("status") != "True"
    ):
        return False
    if (found.get("shards") or {}).get("desired") != shards or condition(body, "Ready").get(
        "status"
    ) != "True":
        return False
    epochs = GrpcBrokers(token=None).epochs(endpoints(found))  # the operator's own reading
    return set(epochs.values()) == {found["routing"]["epoch"]}


def scale(cluster: LocalCluster, shards: int) -> None:
    patch = {"spec": {"minShards": shards, "maxShards": shards}}
    cluster.kubectl(
        "patch", "shardallocation", QUEUE, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch)
    )


class Operator:
    """The operator process, restartable: a SIGKILL and a fresh process with no memory."""

    def __init__(self, cluster: LocalCluster, workdir: Path, stack: ExitStack) -> None:
        self.cluster, self.workdir, self.stack = cluster, workdir, stack
        self.started = 0
        self.current: dict[str, Any] = {}

    def start(self) -> None:
        self.started += 1
        self.current = self.stack.enter_context(
            running_operator(
                self.cluster, self.workdir / f"operator-{self.started}", env=OPERATOR_ENV, installed=True
            )
        )

    def kill(self) -> None:
        process = self.current["process"]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def moving(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cluster = local_cluster
    install(cluster)
    with ExitStack() as stack:
        operator = Operator(cluster, tmp_path_factory.mktemp("moving"), stack)
        operator.start()
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(queue_body()))
        try:
            wait_for(
                lambda: settled(cluster, 2),
                180,
                "2 shards Ready and Routed",
                lambda: json.dumps(status(cluster), indent=1)[-3000:],
            )
            yield {"cluster": cluster, "operator": operator}
        finally:
            cluster.kubectl("delete", "shardallocation", QUEUE, "-n", NAMESPACE, "--wait=false", check=False)


def moves(found: dict[str, Any]) -> list[dict[str, Any]]:
    return list(found.get("migrations") or [])


def test_scale_out_moves_slots_onto_new_shards_and_scale_in_empties_them_under_load(
    moving: dict[str, Any],
) -> None:
    cluster = moving["cluster"]
    bootstrap = endpoints(status(cluster))[0]
    began = time.monotonic()
    with traffic.Continuous(bootstrap, "scale-cycle", KEYS) as live:
        time.sleep(3)
        scale(cluster, 4)
        wait_for(
            lambda: settled(cluster, 4),
            300,
            "4 shards, each owning slots, every broker at the final epoch",
            lambda: json.dumps(status(cluster), indent=1)[-4000:],
        )
        out_s = time.monotonic() - began
        after_out = status(cluster)
        scale(cluster, 2)
        wait_for(
            lambda: settled(cluster, 2),
            300,
            "back to 2 shards with shards 2 and 3 emptied",
            lambda: json.dumps(status(cluster), indent=1)[-4000:],
        )
        in_s = time.monotonic() - began - out_s
    assert live.error is None, repr(live.error)
    verdict = live.verdict()
    final = status(cluster)
    done = [m for m in moves(final) if m["phase"] == "Done"]
    pauses = sorted(float(m["pauseMs"]) for m in done if "pauseMs" in m)
    report = {
        **verdict,
        "scale_out_s": round(out_s, 1),
        "scale_in_s": round(in_s, 1),
        "moves_done": len(done),
        "rolled_back": sum(m["phase"] == "RolledBack" for m in moves(final)),
        "pause_ms_max": pauses[-1] if pauses else None,
        "epoch": final["routing"]["epoch"],
    }
    print("migrations-live:", json.dumps(report))
    assert verdict["acked"] > 1000, "traffic flowed through the scale cycle"
    assert verdict["finished"] and verdict["pending"] == 0, f"a publish never resolved: {report}"
    assert verdict["lost"] == verdict["duplicated"] == verdict["reordered"] == 0, report
    assert verdict["redelivered"] == 0, "no broker was killed: no ack was lost"
    assert len({m["target"] for m in moves(after_out) if m["phase"] == "Done"}) >= 2, "onto shards 2 and 3"
    drained = [m for m in moves(final) if m["source"] in (2, 3)]
    assert drained and all(m["phase"] == "Done" for m in drained), drained
    assert all("pauseMs" in m for m in done), "every switched move records its pause"
    sts = json.loads(
        cluster.kubectl("get", "statefulset", f"{QUEUE}-shard", "-n", NAMESPACE, "-o", "json").stdout
    )
    assert sts["spec"]["replicas"] == 2
    events = cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={QUEUE}", "-o", "json"
    )
    reasons = {e["reason"] for e in json.loads(events.stdout)["items"]}
    assert {"MoveStarted", "MoveSwitched", "MoveDone", "DrainBeforeScaleIn"} <= reasons, reasons
    assert any(" moves in flight: " in m for m in MIGRATING_SEEN), "Migrating=True counted the moves"
    metrics = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scrape(moving["operator"].current["metrics"]).splitlines()
        if line.startswith("foreshard_operator_m") and f'queue="{QUEUE}"' in line
    }
    assert metrics[
        f'foreshard_operator_moves_total{{namespace="{NAMESPACE}",queue="{QUEUE}",result="done"}}'
    ] >= len(done), metrics
    assert metrics[
        f'foreshard_operator_move_pause_seconds_count{{namespace="{NAMESPACE}",queue="{QUEUE}"}}'
    ] >= len(done), metrics
    assert (
        metrics[f'foreshard_operator_migrations_in_flight{{namespace="{NAMESPACE}",queue="{QUEUE}"}}'] == 0
    ), metrics


def test_an_operator_killed_while_a_move_is_fenced_or_switching_is_resumed_by_a_new_one(
    moving: dict[str, Any],
) -> None:
    cluster, operator = moving["cluster"], moving["operator"]
    bootstrap = endpoints(status(cluster))[0]
    kills: list[dict[str, Any]] = []
    with traffic.Continuous(bootstrap, "operator-kill", KEYS) as live:
        time.sleep(2)
        scale(cluster, 4)
        for _ in range(6):  # each wave moves several slots: the watch catches one in the window
            seen = devenv.watch_migration(cluster, NAMESPACE, QUEUE, {"Fence", "Switch"}, 120)
            if seen is None:
                break
            operator.kill()
            after = {m["id"]: m for m in moves(status(cluster))}[seen["id"]]
            kills.append({"id": seen["id"], "seen": seen["phase"], "recorded_at_kill": after["phase"]})
            operator.start()
            if after["phase"] in ("Fence", "Switch"):
                break
        wait_for(
            lambda: settled(cluster, 4),
            300,
            "4 shards settled after the operator restarts",
            lambda: json.dumps(status(cluster), indent=1)[-4000:],
        )
    assert live.error is None, repr(live.error)
    verdict = live.verdict()
    final = moves(status(cluster))
    print("migrations-operator-kill:", json.dumps({**verdict, "kills": kills}))
    assert kills and kills[-1]["recorded_at_kill"] in ("Fence", "Switch"), kills
    killed = {m["id"]: m for m in final}[kills[-1]["id"]]
    assert killed["phase"] in ("Done", "RolledBack"), killed
    assert all(m["phase"] in ("Done", "RolledBack") for m in final), final
    assert verdict["acked"] > 500
    assert verdict["finished"] and verdict["pending"] == 0, f"a publish never resolved: {verdict}"
    assert verdict["lost"] == verdict["duplicated"] == verdict["reordered"] == 0, verdict
    assert verdict["redelivered"] == 0, "no broker was killed: no ack was lost"


BROKER_KILLS = [("source", "Prepare"), ("target", "Fence"), ("source", "Switch"), ("target", "Drain")]


def test_source_and_target_brokers_killed_at_move_phases_lose_nothing_and_every_move_ends(
    moving: dict[str, Any],
) -> None:
    cluster = moving["cluster"]
    if not settled(cluster, 4):  # run on its own (the previous test leaves 4 shards)
        scale(cluster, 4)
        wait_for(lambda: settled(cluster, 4), 300, "4 shards settled")
    bootstrap = endpoints(status(cluster))[0]
    one_at_a_time = {"spec": {"migration": {"maxConcurrentMoves": 1}}}  # more waves: a phase per kill
    cluster.kubectl(
        "patch", "shardallocation", QUEUE, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(one_at_a_time)
    )
    kills: list[dict[str, Any]] = []
    began = time.monotonic()
    with traffic.Continuous(bootstrap, "broker-kill", KEYS) as live:
        time.sleep(2)
        scale(cluster, 2)
        for victim, phase in BROKER_KILLS:
            hit = {k["id"] for k in kills}  # one kill a move: a retried move is not hit again
            seen = devenv.watch_migration(cluster, NAMESPACE, QUEUE, {phase}, 90, hit)
            if seen is None:
                break
            pod = f"{QUEUE}-shard-{seen[victim]}"
            pid = devenv.kill_broker(cluster, NAMESPACE, pod)
            assert pid is not None, f"no broker recorded for {pod}"
            kills.append({"victim": victim, "phase": phase, "id": seen["id"], "pod": pod})
            assert devenv.wait_broker_restarted(cluster, NAMESPACE, pod, pid, 90), f"{pod} not restarted"
        wait_for(
            lambda: settled(cluster, 2),
            300,
            "back to 2 shards after the broker kills",
            lambda: json.dumps(status(cluster), indent=1)[-4000:],
        )
    assert live.error is None, repr(live.error)
    verdict = live.verdict()
    final = {m["id"]: m for m in moves(status(cluster))}
    ends = [final.get(k["id"], {}).get("phase") for k in kills]
    print(
        "migrations-broker-kill:",
        json.dumps({**verdict, "kills": kills, "ends": ends, "seconds": round(time.monotonic() - began)}),
    )
    assert [(k["victim"], k["phase"]) for k in kills] == BROKER_KILLS, f"every kill case was aimed: {kills}"
    assert all(end in ("Done", "RolledBack") for end in ends), ends
    assert all(m["phase"] in ("Done", "RolledBack") for m in final.values()), final
    assert verdict["acked"] > 500
    assert verdict["finished"] and verdict["pending"] == 0, f"a publish never resolved: {verdict}"
    assert verdict["lost"] == verdict["duplicated"] == verdict["reordered"] == 0, verdict


PLANNED = "planned"
STEP_S = 5


def planned_body() -> dict[str, Any]:
    """A queue whose shard count the planner decides: 2 to 4 shards of 40 msg/s, headroom 1."""
    body = queue_body()
    body["metadata"]["name"] = PLANNED
    body["spec"].update(
        {
            "maxShards": 4,
            "capacity": {"messagesPerSecond": 40},
            "scaling": {"leadTime": "5s", "headroom": 1.0, "scaleDownStabilization": "10s"},
        }
    )
    return body


def asked(cluster: LocalCluster, shards: int) -> bool:
    """The planner's plan asks for `shards` and the queue has settled there."""
    plan = status(cluster, PLANNED).get("plan") or {}
    return plan.get("targetShards") == shards and settled(cluster, shards, PLANNED)


def test_the_planner_scales_out_and_back_in_from_the_offered_load_alone(
    moving: dict[str, Any], tmp_path: Path
) -> None:
    """minShards 2 and maxShards 4 never change: the offered rate alone takes the queue 2 -> 4 -> 2
    through the operator's decide (arrivals scraped by Prometheus, no backfilled history)."""
    cluster = moving["cluster"]
    env = DevEnv(tmp_path, NAMESPACE, cluster=cluster)
    url = env.history({}, end_at_s=time.time())
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(planned_body()))
    try:
        wait_for(lambda: settled(cluster, 2, PLANNED), 180, "2 shards (forecasting off: minShards)")
        bootstrap = endpoints(status(cluster, PLANNED))[0]
        # 20 msg/s a shard at headroom 1: 30 msg/s needs 2, 90 needs 5 (4 at most), 15 needs 1 (2)
        with traffic.Continuous(bootstrap, "planned", KEYS, rate=30) as live:
            forecast = {
                "prometheusURL": url, "timeScale": 60, "step": f"{STEP_S}s", "lookback": "40s",
                "longHorizon": "60s",
            }  # fmt: skip
            patch = json.dumps({"spec": {"forecast": forecast}})
            cluster.kubectl("patch", "shardallocation", PLANNED, "-n", NAMESPACE, "--type=merge", "-p", patch)
            wait_for(lambda: asked(cluster, 2), 90, "the planner's plan at 2 shards")
            for rate, shards in ((90, 4), (15, 2)):
                time.sleep(STEP_S - time.time() % STEP_S + 0.2)  # on the planner's grid
                live.rate = rate
                wait_for(
                    lambda shards=shards: asked(cluster, shards),
                    240,
                    f"the planner's {shards} shards at {rate} msg/s",
                    lambda: json.dumps(status(cluster, PLANNED), indent=1)[-3000:],
                )
        body = get(cluster, "shardallocation", PLANNED) or {}
        events = cluster.kubectl(
            "get", "events", "-n", NAMESPACE, "--field-selector",
            f"reason=Scaled,involvedObject.name={PLANNED}", "-o", "json",
        )  # fmt: skip
        scaled = [e["message"] for e in json.loads(events.stdout)["items"]]
        verdict = live.verdict()
        print("migrations-planned:", json.dumps({**verdict, "scaled": scaled}))
        assert (body["spec"]["minShards"], body["spec"]["maxShards"]) == (2, 4), "the bounds never changed"
        assert any("Shards 2 -> 4" in m for m in scaled) and any("Shards 4 -> 2" in m for m in scaled), scaled
        assert verdict["finished"] and verdict["pending"] == 0, verdict
        assert verdict["lost"] == verdict["duplicated"] == verdict["reordered"] == 0, verdict
    finally:
        if env.prometheus is not None:
            env.prometheus.stop()
        cluster.kubectl("delete", "shardallocation", PLANNED, "-n", NAMESPACE, "--wait=false", check=False)
