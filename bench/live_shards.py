"""Live shards end to end: a 3-shard queue on the local cluster vs one standalone broker, one run.

    local cluster (API server, pod runner, 3 real brokers in shard pods) + the operator routing
      -> the public SDK publishes MESSAGES over KEYS keys through ONE bootstrap endpoint
      -> a consumer group reads everything: lost / duplicated / reordered, per-shard share
      -> again while a shard pod is deleted (the StatefulSet re-creates it on its claim)
    single broker: the same SDK traffic against one standalone broker process

Equal guarantees: every broker (pod or standalone) runs group-commit fsync (`--sync group`, the
shard pods' default), the same SDK producer and consumer, the same payloads and windows. Not equal:
the cluster's 3 brokers and the control plane share this machine's cores with the client, so the
figure is end-to-end throughput through the live path, not shard scaling (that needs more cores).

Prints a table, then ONE JSON line (the last line); writes bench/results/live_shards.{json,txt}.
Environment: BENCH_MESSAGES (default 100000), BENCH_KEYS (1000), BENCH_ROUNDS (3, interleaved).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchio import keep

from foreshard.localcluster import devenv, traffic
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.process import poll_until
from foreshard_broker.routing import RoutingTable
from foreshard_broker.testing import BrokerProcess

MESSAGES = int(os.environ.get("BENCH_MESSAGES", "100000"))
KEYS = int(os.environ.get("BENCH_KEYS", "1000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
NAMESPACE, QUEUE = "bench", "live"


def progress(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


def queue() -> dict[str, Any]:
    return {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": QUEUE, "namespace": NAMESPACE},
        "spec": {"minShards": 3, "maxShards": 3, "template": {"storage": {"size": "1Gi"}}},
    }


def routed(cluster: LocalCluster) -> RoutingTable | None:
    return devenv.routed(cluster, NAMESPACE, QUEUE)


def pod_uid_ready(cluster: LocalCluster, name: str) -> tuple[str, bool]:
    out = cluster.kubectl("get", "pod", name, "-n", NAMESPACE, "-o", "json", check=False).stdout
    if not out:
        return "", False
    pod = json.loads(out)
    states = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions", [])}
    ready = states.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp")
    return pod["metadata"]["uid"], ready


def pod_restart(cluster: LocalCluster, endpoints: dict[int, str]) -> traffic.Verdict:
    """Publish while shard 1's pod is deleted; judge what was acknowledged."""
    published: list[traffic.Published] = []
    thread = threading.Thread(
        target=lambda: published.append(asyncio.run(traffic.publish([endpoints[0]], 60_000, 500, window=500)))
    )
    thread.start()
    time.sleep(0.5)
    uid, _ = pod_uid_ready(cluster, f"{QUEUE}-shard-1")
    cluster.kubectl("delete", "pod", f"{QUEUE}-shard-1", "-n", NAMESPACE, "--wait=false")
    thread.join()
    poll_until(
        lambda: (lambda u, r: u not in ("", uid) and r)(*pod_uid_ready(cluster, f"{QUEUE}-shard-1")),
        "shard 1 back",
        180,
        interval_s=0.5,
    )
    poll_until(lambda: routed(cluster), "routed again", 180, interval_s=0.5)
    return asyncio.run(traffic.judge([endpoints[0]], published[0], "after-restart", 240))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="foreshard-bench-live-") as tmp:
        workdir = Path(tmp)
        cluster = LocalCluster(workdir / "cluster", preferred_ports=False)
        progress("starting the local cluster (control plane + pod runner)")
        cluster.start()
        single = BrokerProcess(workdir / "single", sync="group")
        operator = None
        try:
            devenv.install(cluster, NAMESPACE)
            operator, _ = devenv.start_operator(cluster, workdir, env={"FORESHARD_RESYNC_SECONDS": "2"})
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps(queue()))
            progress("waiting for 3 shards Ready and Routed")
            endpoints = dict(
                poll_until(
                    lambda: routed(cluster), "3 shards Ready and Routed", 180, interval_s=0.5
                ).endpoints
            )
            single.start()
            live_runs, single_runs = [], []
            for round_ in range(ROUNDS):
                progress(
                    f"round {round_ + 1}/{ROUNDS}: {MESSAGES} messages over {KEYS} keys, live then single"
                )
                live_runs.append(asyncio.run(traffic.check(endpoints, MESSAGES, KEYS, f"live-{round_}", 300)))
                single_runs.append(
                    asyncio.run(traffic.check({0: single.endpoint}, MESSAGES, KEYS, f"one-{round_}", 300))
                )
            progress("publishing while a shard pod is deleted")
            restart = pod_restart(cluster, endpoints)
        finally:
            single.kill()
            if operator is not None:
                operator.process.terminate()
            cluster.stop()
    report = figures(live_runs, single_runs, restart)
    keep("live_shards", table(report), report)
    return (
        0
        if report["lost"] == report["duplicated"] == report["reordered"] == report["pod_restart_lost"] == 0
        else 1
    )


def figures(
    live: list[traffic.Verdict], single: list[traffic.Verdict], restart: traffic.Verdict
) -> dict[str, Any]:
    rate = lambda runs: statistics.median(v.messages / v.publish_s for v in runs)  # noqa: E731
    shares = [v.busiest_shard_share for v in live]
    live_rate, single_rate = rate(live), rate(single)
    return {
        "shards": 3,
        "keys": KEYS,
        "messages": MESSAGES,
        "rounds": ROUNDS,
        "lost": sum(v.lost for v in live),
        "duplicated": sum(v.duplicated for v in live),
        "reordered": sum(v.reordered for v in live),
        "busiest_shard_share": round(max(shares), 3),
        "stored_by_shard": live[-1].stored_by_shard,
        "pod_restart_messages": restart.messages,
        "pod_restart_unacknowledged": restart.failed,
        "pod_restart_lost": restart.lost,
        "pod_restart_duplicated": restart.duplicated,
        "pod_restart_reordered": restart.reordered,
        "publish_msgs_s": round(live_rate),
        "single_broker_publish_msgs_s": round(single_rate),
        "ratio_live_vs_single_publish": round(live_rate / single_rate, 3),
        "consume_s_median": round(statistics.median(v.consume_s for v in live), 2),
        "single_broker_consume_s_median": round(statistics.median(v.consume_s for v in single), 2),
        "durability": "group-commit fsync on every broker (live and single)",
    }


def table(r: dict[str, Any]) -> str:
    live = (r["lost"], r["duplicated"], r["reordered"], f"{r['busiest_shard_share']:.3f}")
    restart = (r["pod_restart_lost"], r["pod_restart_duplicated"], r["pod_restart_reordered"], "-")
    rows = [
        ("path", "publish msg/s (median)", "lost", "dup", "reordered", "busiest shard"),
        ("live: 3 shard pods, 1 bootstrap", f"{r['publish_msgs_s']:,}", *live),
        ("single broker", f"{r['single_broker_publish_msgs_s']:,}", "-", "-", "-", "1.000"),
        ("live, shard pod deleted mid-publish", "-", *restart),
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(
        [
            *lines,
            f"ratio live/single publish: {r['ratio_live_vs_single_publish']} ({r['messages']:,} messages, "
            f"{r['keys']} keys, {r['rounds']} interleaved rounds; {r['durability']})",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
