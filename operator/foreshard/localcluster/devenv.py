"""What the demo and the benchmarks set up on a local cluster, in one place.

DevEnv(workdir, namespace)     the one harness: control plane (started or reused), install, the
                               operator process, Prometheus with backfilled history
install(cluster, namespace)    CRDs, the operator's manifests (its Deployment scaled to 0: here
                               it runs as a process), the namespace and its admin token Secret
start_operator(cluster, ...)   `foreshard run` as the foreshard-operator ServiceAccount, finding
                               brokers by the runner's pod annotations, with the cluster's token
kill_broker(cluster, ns, pod)  SIGKILL a shard pod's broker (the runner restarts it, same port)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from foreshard.api import routing as routing_status
from foreshard.api.names import GROUP, SHARD_ALLOCATIONS, VERSION
from foreshard.api.shardallocation import QueueSpec
from foreshard.core.series import Series
from foreshard.localcluster.cluster import LocalCluster, Ports, service_account_kubeconfig, stop_recorded
from foreshard.localcluster.process import Managed, free_port, spawn, stop, stop_pid
from foreshard.localcluster.prometheus import PrometheusServer, backfill
from foreshard_broker.routing import RoutingTable

REPO = Path(__file__).resolve().parents[3]


def install(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    cluster.kubectl("apply", "-k", str(REPO / "manifests"))
    # In the local cluster only shard pods run (the pod runner); the operator runs as a process
    # under the same ServiceAccount and RBAC its Deployment would use.
    cluster.kubectl("scale", "deployment/foreshard-operator", "-n", "foreshard-system", "--replicas=0")
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    cluster.create_admin_token_secret(namespace)


def start_operator(
    cluster: LocalCluster,
    workdir: Path,
    name: str = "operator",
    metrics_port: int | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    account: tuple[str, str] = ("foreshard-system", "foreshard-operator"),
) -> tuple[Managed, int]:
    """The operator process and its metrics port; its log is `<workdir>/logs/<name>.log`.

    `env` adds to or overrides its environment, `args` go to `foreshard run` (--peering,
    --namespace), `account` is the ServiceAccount (namespace, name) it authenticates as.
    """
    config = service_account_kubeconfig(cluster, account[0], account[1], workdir / f"{name}.kubeconfig")
    metrics = free_port(metrics_port)
    argv = [
        sys.executable, "-m", "foreshard.cli", "run",
        "--metrics-port", str(metrics),
        "--liveness-port", str(free_port(None if metrics_port is None else metrics_port + 1, {metrics})),
        # no cluster DNS here: the pod runner writes each broker's address on its pod
        "--broker-endpoints", "annotation",
        "--admin-token-file", str(cluster.admin_token_file),
        *args,
    ]  # fmt: skip
    environment = {"KUBECONFIG": str(config), "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return spawn(name, argv, workdir / "logs", env=environment), metrics


def shard_allocation(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    found = cluster.kubectl("get", "shardallocation", name, "-n", namespace, "-o", "json", check=False)
    return dict(json.loads(found.stdout)) if found.returncode == 0 else None


def routing_of(body: Mapping[str, Any]) -> RoutingTable | None:
    """The queue's recorded routing table (the operator's own reading of status.routing)."""
    slots = QueueSpec.from_body(dict(body)).slots
    return routing_status.from_status((body.get("status") or {}).get("routing"), slots)


def routed(cluster: LocalCluster, namespace: str, name: str) -> RoutingTable | None:
    """The routing table once the queue is Ready and Routed (every broker serves it), else None."""
    body = shard_allocation(cluster, namespace, name)
    states = {c["type"]: c["status"] for c in ((body or {}).get("status") or {}).get("conditions", [])}
    if body is None or not states.get("Ready") == states.get("Routed") == "True":
        return None
    return routing_of(body)


def watch_migration(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    phases: Collection[str],
    timeout_s: float,
    skip: Collection[str] = (),
) -> dict[str, Any] | None:
    """The first move a watch sees recorded in one of `phases` (within milliseconds of its write),
    other than the moves named in `skip` (a fault test aims each kill at a move not hit before)."""
    api = client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))  # type: ignore[no-untyped-call]
    stream = watch.Watch()  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + timeout_s
    try:
        for event in stream.stream(  # type: ignore[no-untyped-call]
            api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            SHARD_ALLOCATIONS,
            field_selector=f"metadata.name={name}",
            timeout_seconds=int(timeout_s),
        ):
            for move in (event["object"].get("status") or {}).get("migrations") or []:
                if move["phase"] in phases and move["id"] not in skip:
                    return dict(move)
            if time.monotonic() > deadline:
                break
    finally:
        stream.stop()  # type: ignore[no-untyped-call]
    return None


def broker_pids(cluster: LocalCluster, namespace: str) -> dict[str, int]:
    """Pod name -> pid of its broker, as the pod runner last recorded them (absent: not running)."""
    recorded = cluster.podrunner_dir / "brokers.json"
    pids: dict[str, int] = json.loads(recorded.read_text() or "{}") if recorded.exists() else {}
    prefix = f"{namespace}/"
    return {key[len(prefix) :]: int(pid) for key, pid in pids.items() if key.startswith(prefix)}


def kill_broker(cluster: LocalCluster, namespace: str, pod: str) -> int | None:
    """SIGKILL the broker of `pod` (a container killed by the kernel: no drain, no goodbye); its
    pid, or None when the runner records none or the pid is no longer a broker."""
    pid = broker_pids(cluster, namespace).get(pod)
    if pid is None or b"foreshard_broker" not in _cmdline(pid):
        return None  # a recorded pid may since belong to something else: never signal it
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_broker_restarted(
    cluster: LocalCluster, namespace: str, pod: str, old_pid: int, timeout_s: float
) -> bool:
    """True once the pod runner runs a new broker for `pod` (its crash-loop back-off first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = broker_pids(cluster, namespace).get(pod)
        if pid is not None and pid != old_pid:
            return True
        time.sleep(0.2)
    return False


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class DevEnv:
    """The development environment the demo, the end-to-end tests and the benchmarks start: the
    local control plane, the operator's manifests and a queue namespace, the operator process as
    its ServiceAccount, and a Prometheus holding backfilled history and scraping every broker.

    `up()` reuses a control plane recorded in `<workdir>/state.json` whose processes all live (a
    second `make demo`), else starts a fresh one; the operator and Prometheus are always started
    afresh (their settings and history belong to this run). Every pid goes into state.json, so
    `foreshard cluster down` (`make down`) stops what a killed run left behind.
    """

    workdir: Path
    namespace: str
    preferred_ports: bool = False
    operator_env: Mapping[str, str] = field(default_factory=dict)
    cluster: LocalCluster | None = None  # given: an already running cluster (a test session's)
    prometheus: PrometheusServer | None = None
    operator: Managed | None = None
    operator_metrics: str = ""
    reused: bool = False

    @property
    def kube(self) -> LocalCluster:
        assert self.cluster is not None, "DevEnv.up() first"
        return self.cluster

    def up(self, progress: Callable[[str], None] = lambda _: None) -> None:
        if self.cluster is None:
            self.cluster = self._cluster(progress)
        progress("installing the CRDs, the operator's RBAC and the brokers' admin token Secret")
        install(self.cluster, self.namespace)
        self._stop_recorded("operator")
        progress("running the operator as ServiceAccount foreshard-system/foreshard-operator")
        self.operator, port = start_operator(
            self.cluster,
            self.workdir,
            metrics_port=28080 if self.preferred_ports else None,
            env=self.operator_env,
        )
        self.operator_metrics = f"http://127.0.0.1:{port}/metrics"
        self._record("operator", self.operator.pid, {"operator_metrics": self.operator_metrics})

    def _cluster(self, progress: Callable[[str], None]) -> LocalCluster:
        cluster = LocalCluster(self.workdir, preferred_ports=self.preferred_ports)
        state_file = self.workdir / "state.json"
        if state_file.exists():
            state = json.loads(state_file.read_text())
            core = {k: v for k, v in state.get("pids", {}).items() if k not in ("operator", "prometheus")}
            if core and all(_alive(pid) for pid in core.values()):
                progress(f"reusing the local control plane recorded in {state_file}")
                cluster.ports = Ports(**state["ports"])
                self.reused = True
                return cluster
            progress("the recorded control plane is not all running: stopping what is left")
            stop_recorded(self.workdir)
        progress(
            "starting etcd, kube-apiserver, controller-manager, scheduler and kwok (first run builds them)"
        )
        cluster.start()
        return cluster

    def history(
        self,
        queues: Mapping[str, Sequence[Series]],
        end_at_s: float,
        scrape_interval_s: int = 1,
        progress: Callable[[str], None] = lambda _: None,
    ) -> str:
        """A fresh Prometheus holding `queues` as history ending at `end_at_s`, scraping the brokers."""
        self._stop_recorded("prometheus")
        if self.prometheus is not None:
            self.prometheus.stop()
        root = self.workdir / "prometheus"
        shutil.rmtree(root, ignore_errors=True)
        server = PrometheusServer(
            root,
            port=free_port(29090 if self.preferred_ports else None),
            scrape_interval_s=scrape_interval_s,
            watch_dirs=[self.kube.scrape_targets_dir],
        )
        progress(f"backfilling {sum(map(len, queues.values()))} series into Prometheus as history")
        backfill(queues, server.data_dir, end_at_s=end_at_s)
        server.start()
        assert server.managed is not None
        self.prometheus = server
        self._record("prometheus", server.managed.pid, {"prometheus": server.url})
        return server.url

    def down(self) -> None:
        """Stop the operator and Prometheus, and the control plane unless it was handed in."""
        for managed in (self.operator,):
            if managed is not None and managed.alive():
                stop(managed)
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.cluster is not None and (self.workdir / "state.json").exists():
            stop_recorded(self.workdir)

    def _record(self, name: str, pid: int, extra: Mapping[str, Any]) -> None:
        state_file = self.workdir / "state.json"
        if not state_file.exists():
            return  # a cluster handed in by a test session: it stops its own processes
        state = json.loads(state_file.read_text())
        state["pids"].pop(name, None)
        state["pids"][name] = pid  # last, so `cluster down` stops it first
        state.update(extra)
        state_file.write_text(json.dumps(state, indent=2))

    def _stop_recorded(self, name: str) -> None:
        state_file = self.workdir / "state.json"
        if state_file.exists():
            pid = json.loads(state_file.read_text()).get("pids", {}).get(name)
            if pid is not None:
                stop_pid(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
