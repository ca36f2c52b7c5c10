"""Operator HA on the real local cluster: two `foreshard run --peering` processes, one acts.

Both modes: cluster-wide (the manifests' ClusterRole, a ClusterKopfPeering) and namespaced (the
chart's Role for one watched namespace, a KopfPeering there). The higher-priority replica
reconciles a live queue (a real broker in its shard pod); the standby stays paused and reconciles
nothing. Then the active one is SIGKILLed (no goodbye in the peering object), the spec changes,
and the standby must take over within the keep-alive lifetime plus a few resync periods: scale the
StatefulSet, route the new shard, and never lower the routing epoch.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import (
    NAMESPACE,
    REPO,
    assert_no_rbac_denials,
    install,
    running_operator,
    scrape,
    wait_for,
)

from foreshard.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

QUEUE = "failover"
PEERING = "failover-test"
LIFETIME_S = 6
RESYNC_S = 2
# the standby waits out the dead one's keep-alive, then lists the queues and runs a pass (which
# took up to 3 s on a loaded two-core machine) before its timers start
TAKEOVER_BOUND_S = LIFETIME_S + 5 * RESYNC_S
Pair = tuple[dict[str, Any], dict[str, Any]]


@dataclass(frozen=True)
class Mode:
    """Where the queue lives, whose account the replicas run as, and where they keep their peering."""

    namespace: str
    account: tuple[str, str]
    peering_kind: str  # clusterkopfpeering (cluster-wide) or kopfpeering (in the watched namespace)
    install: Callable[[LocalCluster], None]

    @property
    def args(self) -> list[str]:
        watch = ["--namespace", self.namespace] if self.peering_kind == "kopfpeering" else []
        return [*watch, "--peering", PEERING]


def install_namespaced(cluster: LocalCluster) -> None:
    """The chart's RBAC for watchNamespaces=[ha-watched]: a Role there with kopfpeerings, no ClusterRole."""
    helm = [str(cluster.toolchain.path("helm")), "template", "haop", str(REPO / "helm" / "foreshard")]
    helm += ["--namespace", "haop-system", "--set", "watchNamespaces={ha-watched}"]
    rendered = subprocess.run(
        [*helm, "--show-only", "templates/rbac.yaml"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert [d["kind"] for d in yaml.safe_load_all(rendered) if d] == ["ServiceAccount", "Role", "RoleBinding"]
    for namespace in ("haop-system", "ha-watched"):
        cluster.kubectl("create", "namespace", namespace, check=False)
    cluster.kubectl("apply", "-f", "-", stdin=rendered)
    cluster.create_admin_token_secret("ha-watched")  # the shard pods' brokers need it


MODES = {
    "cluster-wide": Mode(
        NAMESPACE, ("foreshard-system", "foreshard-operator"), "clusterkopfpeering", install
    ),
    "namespaced": Mode("ha-watched", ("haop-system", "haop-foreshard"), "kopfpeering", install_namespaced),
}


def get(cluster: LocalCluster, mode: Mode, kind: str, name: str) -> dict[str, Any]:
    found = cluster.kubectl("get", kind, name, "-n", mode.namespace, "-o", "json", check=False)
    return dict(json.loads(found.stdout)) if found.returncode == 0 else {}


def queue_body(mode: Mode, min_shards: int) -> str:
    return json.dumps(
        {
            "apiVersion": "foreshard.io/v1alpha1",
            "kind": "ShardAllocation",
            "metadata": {"name": QUEUE, "namespace": mode.namespace},
            "spec": {"minShards": min_shards, "maxShards": 2, "template": {"storage": {"size": "1Gi"}}},
        }
    )


def reconciles(metrics_url: str) -> float:
    """foreshard_operator_reconciles_total for this queue, all results (0 before the first pass)."""
    pattern = re.compile(rf'^foreshard_operator_reconciles_total\{{[^}}]*queue="{QUEUE}"[^}}]*\}} (\S+)$')
    return sum(float(m.group(1)) for line in scrape(metrics_url).splitlines() if (m := pattern.match(line)))


def condition(body: dict[str, Any], kind: str) -> str:
    found = [c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == kind]
    return str(found[0]["status"]) if found else ""


def routed_shards(cluster: LocalCluster, mode: Mode) -> int:
    """How many shards the recorded routing names, once Ready and Routed are True (else 0)."""
    body = get(cluster, mode, "shardallocation", QUEUE)
    if condition(body, "Ready") != "True" or condition(body, "Routed") != "True":
        return 0
    return len((body.get("status") or {}).get("routing", {}).get("endpoints", []))


def replicas(cluster: LocalCluster, mode: Mode) -> int:
    return int(get(cluster, mode, "statefulset", f"{QUEUE}-shard").get("spec", {}).get("replicas", 0))


def peers(cluster: LocalCluster, mode: Mode) -> dict[str, Any]:
    """The keep-alives in the peering object: identity -> {priority, lifetime, lastseen}."""
    where = ["-n", mode.namespace] if mode.peering_kind == "kopfpeering" else []
    found = cluster.kubectl(
        "get", f"{mode.peering_kind}.kopf.dev", PEERING, *where, "-o", "json", check=False
    )
    return dict(json.loads(found.stdout).get("status") or {}) if found.returncode == 0 else {}


class EpochWatch:
    """Every routing epoch the API server records for the queue, in order, through one watch."""

    def __init__(self, cluster: LocalCluster, mode: Mode) -> None:
        template = '{.metadata.resourceVersion} {.status.routing.epoch}{"\\n"}'
        command = [str(cluster.toolchain.path("kubectl")), f"--kubeconfig={cluster.kubeconfig}", "get"]
        command += ["shardallocation", QUEUE, "-n", mode.namespace, "--watch", "-o", f"jsonpath={template}"]
        self.epochs: list[int] = []
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            parts = line.split()
            if len(parts) == 2:  # objects without a routing table yet print no epoch
                self.epochs.append(int(parts[1]))

    def stop(self) -> list[int]:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._reader.join(timeout=10)
        return list(self.epochs)


def paused(log: Path) -> bool:
    """kopf's last word on peering in this replica's log was a pause (it starts paused, silently)."""
    text = log.read_text()
    return text.rfind("Resuming operations") < text.rfind("Pausing operations") or (
        "Resuming operations" not in text and "Activity 'configure' succeeded" in text
    )


@contextmanager
def operator_pair(cluster: LocalCluster, mode: Mode, workdir: Path, lifetime_s: int) -> Iterator[Pair]:
    """Two replicas with one peering name: priority 200 (the active one) and 100 (the standby)."""
    mode.install(cluster)
    env = {"FORESHARD_PEERING_LIFETIME_SECONDS": str(lifetime_s), "FORESHARD_RESYNC_SECONDS": str(RESYNC_S)}
    common: dict[str, Any] = {"env": env, "account": mode.account, "installed": True}
    with (
        running_operator(cluster, workdir / "active", args=[*mode.args, "--priority", "200"], **common) as a,
        running_operator(cluster, workdir / "standby", args=[*mode.args, "--priority", "100"], **common) as b,
    ):
        try:
            yield a, b
        finally:  # while the standby lives, so that it removes its finalizer
            cluster.kubectl(
                "delete", "shardallocation", QUEUE, "-n", mode.namespace, "--wait=false", check=False
            )


def fail_over(
    cluster: LocalCluster, mode: Mode, pair: Pair, stop: Callable[[Any], None], bound_s: float
) -> None:
    """The active one routes 1 shard while the standby idles; `stop` it, ask for 2 shards: the
    standby must scale within `bound_s` and route both, the epoch only ever rising."""
    active, standby = pair

    def logs() -> str:
        return f"active:\n{active['log'].read_text()[-2500:]}\nstandby:\n{standby['log'].read_text()[-2500:]}"

    wait_for(
        lambda: sorted(p["priority"] for p in peers(cluster, mode).values()) == [100, 200],
        60,
        "both replicas' keep-alives in the peering",
        logs,
    )
    # a replica that starts first acts alone until it sees the other: the standby may resume and
    # then pause in favour of the higher priority; the queue comes only once it has paused
    wait_for(lambda: paused(standby["log"]), 30, "the lower-priority replica to pause", logs)
    cluster.kubectl("apply", "-f", "-", stdin=queue_body(mode, 1))
    watch = EpochWatch(cluster, mode)
    wait_for(
        lambda: routed_shards(cluster, mode) == 1, 120, "1 shard Ready and Routed by the active one", logs
    )
    first = reconciles(active["metrics"])
    time.sleep(3 * RESYNC_S)  # several resync periods: the active one keeps passing, the standby none
    assert reconciles(active["metrics"]) > first > 0, logs()
    assert reconciles(standby["metrics"]) == 0, logs()
    assert paused(standby["log"]) and not paused(active["log"]), logs()
    epoch_before = int(get(cluster, mode, "shardallocation", QUEUE)["status"]["routing"]["epoch"])

    stopped_at = time.monotonic()
    stop(active["process"])
    active["process"].wait(timeout=30)
    cluster.kubectl("apply", "-f", "-", stdin=queue_body(mode, 2))

    wait_for(lambda: replicas(cluster, mode) == 2, bound_s, "the standby to scale to 2 shards", logs)
    scaled_s = time.monotonic() - stopped_at
    wait_for(lambda: routed_shards(cluster, mode) == 2, 120, "2 shards Ready and Routed by the standby", logs)
    routed_s = time.monotonic() - stopped_at
    print(f"failover ({mode.peering_kind}): scaled {scaled_s:.1f} s, routed {routed_s:.1f} s after the stop")

    assert reconciles(standby["metrics"]) > 0, logs()
    epoch_after = int(get(cluster, mode, "shardallocation", QUEUE)["status"]["routing"]["epoch"])
    assert epoch_after > epoch_before
    wait_for(lambda: watch.epochs[-1:] == [epoch_after], 10, "the watch to deliver the last epoch")
    epochs = watch.stop()
    assert epochs == sorted(epochs) and epochs[-1] == epoch_after, f"the routing epoch went back: {epochs}"
    # only the live replica stays in the peering object (a dead one's keep-alive is cleaned out)
    wait_for(lambda: len(peers(cluster, mode)) == 1, 12, "only the live replica in the peering", logs)
    assert_no_rbac_denials(standby["log"])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_standby_takes_over_a_killed_active_operator_and_routes_the_queue_on(
    local_cluster: LocalCluster, mode: str, tmp_path: Path
) -> None:
    with operator_pair(local_cluster, MODES[mode], tmp_path, LIFETIME_S) as pair:
        # SIGKILL: no goodbye, so the standby waits out the dead one's keep-alive
        fail_over(local_cluster, MODES[mode], pair, lambda p: p.kill(), TAKEOVER_BOUND_S)


def test_a_gracefully_stopped_active_operator_hands_over_without_waiting_out_its_lifetime(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    lifetime_s = 60  # far longer than the bound: only the goodbye can explain a takeover in time
    with operator_pair(local_cluster, MODES["cluster-wide"], tmp_path, lifetime_s) as pair:
        # SIGTERM (what a rolling update sends): kopf removes its keep-alive on the way out
        fail_over(local_cluster, MODES["cluster-wide"], pair, lambda p: p.terminate(), 4 * RESYNC_S + 10)
