"""A real Kubernetes control plane on 127.0.0.1, built from the upstream Go modules.

    etcd --> kube-apiserver (RBAC, client-cert auth, TokenRequest)
                 ^      ^      ^
     controller-manager  scheduler  kwok (fake nodes: pods go Running and Ready)
                                    pod runner (shard pods: real brokers on loopback)

`LocalCluster.start()` brings the components up in that order, waiting for each to be healthy;
if one dies it raises `StartError` with the tail of that component's log and stops everything it
started. Shard pods (managed-by=foreshard-operator, component=shard) are left alone by kwok and
run by the pod runner (`podrunner.py`), which also binds their volume claims. `stop()` leaves no
process behind. State (PIDs, ports) is written to
`<workdir>/state.json` so that `foreshard cluster down` can stop a cluster another process started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from foreshard.api.names import ADMIN_TOKEN_KEY, ADMIN_TOKEN_SECRET
from foreshard.localcluster import pki, shardpods, volumes
from foreshard.localcluster.process import (
    Managed,
    StartError,
    free_port,
    http_ok,
    https_ok,
    spawn,
    stop,
    stop_pid,
    wait_until,
)
from foreshard.localcluster.toolchain import Toolchain

# Ports tried first (so that a long-lived `cluster up` keeps stable addresses); any port in use
# is replaced by a free one. Test fixtures pass `preferred_ports=False` and always get free ports.
PREFERRED_PORTS = {
    "etcd": 22379,
    "etcd_peer": 22380,
    "apiserver": 26443,
    "controller_manager": 30257,
    "scheduler": 30259,
    "kwok": 30247,
}
COMPONENT_TIMEOUT_S = 60.0
# The runner drains every broker on SIGTERM (each broker's own grace is 10 s, in parallel).
RUNNER_STOP_TIMEOUT_S = 45.0


@dataclass
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def choose(cls, preferred: bool) -> Ports:
        taken: set[int] = set()
        chosen = {}
        for name, port in PREFERRED_PORTS.items():
            chosen[name] = free_port(port if preferred else None, taken)
            taken.add(chosen[name])
        return cls(**chosen)


@dataclass
class LocalCluster:
    workdir: Path
    toolchain: Toolchain = field(default_factory=Toolchain.default)
    nodes: int = 3
    preferred_ports: bool = True
    processes: list[Managed] = field(default_factory=list)
    ports: Ports | None = None
    # Seconds from the start of start() until each component was ready (for the startup benchmark).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        assert self.ports is not None, "the cluster is not started"
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def admin_token_file(self) -> Path:
        """The brokers' Admin API token (random per start, mode 0600); every runner broker uses it."""
        return self.workdir / "admin-token"

    @property
    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    @property
    def scrape_targets_dir(self) -> Path:
        """file_sd JSON the pod runner keeps listing its brokers in (see PrometheusServer.watch_dirs)."""
        return self.workdir / "scrape-targets"

    @property
    def podrunner_dir(self) -> Path:
        return self.workdir / "podrunner"

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.toolchain.ensure()
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = Ports.choose(self.preferred_ports)
        certs = pki.create(self.workdir / "pki")
        # Every start makes a new PKI, so an earlier start's etcd data would hold objects signed
        # for the old one (service-account tokens, the root CA copied into every namespace).
        # This is a throwaway cluster: each start is an empty one.
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        # Likewise the runner's volumes and ports: they belonged to the previous cluster's objects.
        stop_brokers(self.workdir)
        shutil.rmtree(self.podrunner_dir, ignore_errors=True)
        shutil.rmtree(self.scrape_targets_dir, ignore_errors=True)
        self._write_admin_token()
        steps = (
            ("etcd", self._start_etcd),
            ("apiserver", lambda: self._start_apiserver(certs)),
            ("kubeconfigs", lambda: self._write_kubeconfigs(certs)),
            ("controllers", self._start_controllers),
            ("kwok", self._start_kwok),
            ("nodes", self._create_nodes),
            ("storage", self._create_storage_class),
            ("podrunner", self._start_podrunner),
        )
        try:
            for name, step in steps:
                step()
                self.timings[name] = round(time.monotonic() - began, 2)
        except BaseException:
            self.stop()
            raise
        self._write_state()

    def stop(self) -> None:
        # Reversed start order: the runner first, so it drains its brokers while the API is up.
        for managed in reversed(self.processes):
            stop(managed, RUNNER_STOP_TIMEOUT_S if managed.name == "podrunner" else 10.0)
        self.processes.clear()
        stop_brokers(self.workdir)  # any the runner could not stop (it was killed, say)
        self.state_file.unlink(missing_ok=True)

    def create_admin_token_secret(self, namespace: str) -> None:
        """The Secret shard pods mount for their Admin API token, holding this cluster's token."""
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": ADMIN_TOKEN_SECRET, "namespace": namespace},
            "type": "Opaque",
            "stringData": {ADMIN_TOKEN_KEY: self.admin_token},
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(secret))

    # -- components -----------------------------------------------------------------------

    def _run(self, name: str, *args: str) -> Managed:
        managed = spawn(name, [str(self.toolchain.path(name)), *args], self.workdir / "logs")
        self.processes.append(managed)
        return managed

    def _start_etcd(self) -> None:
        assert self.ports is not None
        client, peer = f"http://127.0.0.1:{self.ports.etcd}", f"http://127.0.0.1:{self.ports.etcd_peer}"
        etcd = self._run(
            "etcd",
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--log-level=warn",
            # A throwaway cluster: fsync buys nothing and costs seconds on a shared disk.
            "--unsafe-no-fsync",
        )
        wait_until(lambda: http_ok(f"{client}/health"), "etcd /health", [etcd], COMPONENT_TIMEOUT_S)

    def _start_apiserver(self, certs: pki.ClusterPKI) -> None:
        assert self.ports is not None
        apiserver = self._run(
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports.apiserver}",
            "--authorization-mode=Node,RBAC",
            f"--client-ca-file={certs.ca.cert}",
            f"--tls-cert-file={certs.apiserver.cert}",
            f"--tls-private-key-file={certs.apiserver.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={certs.service_account_pub}",
            f"--service-account-signing-key-file={certs.service_account_key}",
            f"--service-cluster-ip-range={pki.SERVICE_CIDR}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        )
        context = self.client_ssl_context(certs)
        wait_until(
            lambda: https_ok(f"{self.server}/readyz", context), "kube-apiserver /readyz", [apiserver], 90.0
        )

    def _write_kubeconfigs(self, certs: pki.ClusterPKI) -> None:
        for name, pair in (
            ("admin", certs.admin),
            ("controller-manager", certs.controller_manager),
            ("scheduler", certs.scheduler),
        ):
            write_kubeconfig(self.workdir / f"{name}.kubeconfig", self.server, certs.ca.cert, pair, name)

    def _start_controllers(self) -> None:
        assert self.ports is not None
        cm_config = self.workdir / "controller-manager.kubeconfig"
        sched_config = self.workdir / "scheduler.kubeconfig"
        certs_dir = self.workdir / "pki"
        manager = self._run(
            "kube-controller-manager",
            f"--kubeconfig={cm_config}",
            f"--authentication-kubeconfig={cm_config}",
            f"--authorization-kubeconfig={cm_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            f"--service-account-private-key-file={certs_dir / 'sa.key'}",
            f"--root-ca-file={certs_dir / 'ca.crt'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            "--v=1",
        )
        scheduler = self._run(
            "kube-scheduler",
            f"--kubeconfig={sched_config}",
            f"--authentication-kubeconfig={sched_config}",
            f"--authorization-kubeconfig={sched_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.scheduler}",
            "--leader-elect=false",
            "--v=1",
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE  # self-signed serving certs
        cm_url = f"https://127.0.0.1:{self.ports.controller_manager}/healthz"
        sched_url = f"https://127.0.0.1:{self.ports.scheduler}/healthz"
        wait_until(lambda: https_ok(cm_url, insecure), "kube-controller-manager /healthz", [manager], 60.0)
        wait_until(lambda: https_ok(sched_url, insecure), "kube-scheduler /healthz", [scheduler], 60.0)

    def _start_kwok(self) -> None:
        assert self.ports is not None
        kwok = self._run(
            "kwok",
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self._write_kwok_stages()}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16",
            "--node-ip=127.0.0.1",
        )
        health = f"http://127.0.0.1:{self.ports.kwok}/healthz"
        wait_until(lambda: http_ok(health), "kwok /healthz", [kwok], 60.0)

    def _create_nodes(self) -> None:
        documents = [fake_node(f"kwok-node-{i}") for i in range(self.nodes)]
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))
        wait_until(self._nodes_ready, f"{self.nodes} kwok nodes Ready", self.processes, 60.0)

    def _write_kwok_stages(self) -> Path:
        """kwok's stages minus the shard pods, which the pod runner plays kubelet for."""
        filtered = self.workdir / "kwok-stages.yaml"
        filtered.write_text(shardpods.kwok_stages(self.toolchain.kwok_stages.read_text()))
        return filtered

    def _write_admin_token(self) -> None:
        self.admin_token_file.unlink(missing_ok=True)
        fd = os.open(self.admin_token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")

    def _create_storage_class(self) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(volumes.storage_class()))

    def _start_podrunner(self) -> None:
        runner = spawn(
            "podrunner",
            [
                sys.executable,
                "-m",
                "foreshard.localcluster.podrunner",
                f"--kubeconfig={self.kubeconfig}",
                f"--workdir={self.workdir}",
                f"--admin-token-file={self.admin_token_file}",
                f"--prometheus-targets={self.scrape_targets_dir}",
            ],
            self.workdir / "logs",
        )
        self.processes.append(runner)
        # Its first pass writes the (empty) target list: the runner is listing pods.
        targets = self.scrape_targets_dir / "foreshard-brokers.json"
        wait_until(targets.exists, "the pod runner's first pass", [runner], COMPONENT_TIMEOUT_S)

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json").stdout
        nodes = json.loads(out)["items"]
        ready = [
            n
            for n in nodes
            for c in n.get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        ]
        return len(ready) >= self.nodes

    # -- helpers --------------------------------------------------------------------------

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.toolchain.path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    @staticmethod
    def client_ssl_context(certs: pki.ClusterPKI) -> ssl.SSLContext:
        """The admin's TLS identity, for health checks the kubectl binary is too slow for."""
        context = ssl.create_default_context(cafile=str(certs.ca.cert))
        context.load_cert_chain(str(certs.admin.cert), str(certs.admin.key))
        return context

    def _write_state(self) -> None:
        state = {
            "ports": asdict(self.ports) if self.ports else {},
            "pids": {m.name: m.pid for m in self.processes},
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "admin_token_file": str(self.admin_token_file),
            "scrape_targets_dir": str(self.scrape_targets_dir),
            "started_at": time.time(),
        }
        self.state_file.write_text(json.dumps(state, indent=2))


def write_kubeconfig(path: Path, server: str, ca: Path, pair: pki.Pair, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "foreshard-local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}
        ],
        "contexts": [{"name": "foreshard-local", "context": {"cluster": "foreshard-local", "user": user}}],
        "current-context": "foreshard-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def fake_node(name: str) -> dict[str, object]:
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def stop_recorded(workdir: Path) -> list[str]:
    """Stop a cluster from its state file (started by another process); returns what was stopped."""
    state_file = workdir / "state.json"
    if not state_file.exists():
        return []
    pids: dict[str, int] = json.loads(state_file.read_text()).get("pids", {})
    for name in reversed(list(pids)):
        stop_pid(pids[name], RUNNER_STOP_TIMEOUT_S if name == "podrunner" else 10.0)
    brokers = stop_brokers(workdir)
    state_file.unlink()
    return [*pids, *brokers]


def _is_broker(pid: int) -> bool:
    try:
        return b"foreshard_broker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_brokers(workdir: Path) -> list[str]:
    """Stop the brokers the pod runner recorded (each in its own process group) and forget them."""
    recorded = workdir / "podrunner" / "brokers.json"
    if not recorded.exists():
        return []
    pids: dict[str, int] = json.loads(recorded.read_text() or "{}")
    for pid in pids.values():
        if _is_broker(pid):  # a recorded pid may since belong to something else
            stop_pid(pid)
    recorded.unlink(missing_ok=True)
    return [f"broker {key}" for key in pids]


__all__ = ["LocalCluster", "StartError", "service_account_kubeconfig", "stop_recorded"]


def service_account_kubeconfig(cluster: LocalCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount with a TokenRequest token (1 h)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "foreshard-local",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.workdir / "pki" / "ca.crt"),
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "foreshard-local", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
