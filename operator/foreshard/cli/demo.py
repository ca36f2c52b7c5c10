"""`foreshard demo`: the main job on the embedded default.

Starts (or reuses) the local control plane, a real Prometheus holding the bundled traces as
history that ends now, installs the CRDs and the operator's RBAC, runs the operator as its own
ServiceAccount, creates a sample queue and waits until the operator reports it Ready. Everything
keeps running in the background; `foreshard cluster down` (`make down`) stops it all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from foreshard import traces
from foreshard.localcluster.cluster import LocalCluster, Ports, service_account_kubeconfig
from foreshard.localcluster.process import free_port, spawn
from foreshard.localcluster.prometheus import PrometheusServer, backfill

REPO = Path(__file__).resolve().parents[3]
NAMESPACE = "demo"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="control plane + Prometheus + CRDs + operator + a sample queue"
    )
    parser.add_argument("--workdir", type=Path, default=Path("build/cluster"))
    parser.add_argument("--traces", type=Path, default=traces.BUNDLED, help="default: data/traces")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.set_defaults(func=_demo)


def _step(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    cluster = _cluster(workdir)
    prometheus_url = _prometheus(workdir, args.traces)
    _step("installing the CRDs and the operator's RBAC")
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    cluster.kubectl("apply", "-k", str(REPO / "manifests"))
    # In the local cluster pods are simulated, so the operator runs here as a process, under the
    # same ServiceAccount and RBAC its Deployment would use.
    cluster.kubectl("scale", "deployment/foreshard-operator", "-n", "foreshard-system", "--replicas=0")
    operator_pid = _operator(cluster, workdir)
    _step("creating the sample queue `orders` in namespace demo")
    _apply_sample(cluster, prometheus_url)
    ready = _wait_ready(cluster, timeout_s=90)
    summary = {
        "server": cluster.server,
        "kubeconfig": str(cluster.kubeconfig),
        "kubectl": str(cluster.toolchain.path("kubectl")),
        "prometheus": prometheus_url,
        "operator_pid": operator_pid,
        "queue_ready": ready,
    }
    _print_summary(cluster, summary, args.json)
    return 0 if ready else 1


def _cluster(workdir: Path) -> LocalCluster:
    cluster = LocalCluster(workdir)
    state_file = workdir / "state.json"
    if state_file.exists():
        _step(f"reusing the local control plane recorded in {state_file}")
        cluster.ports = Ports(**json.loads(state_file.read_text())["ports"])
        return cluster
    _step("starting etcd, kube-apiserver, controller-manager, scheduler and kwok (first run builds them)")
    cluster.start()
    return cluster


def _record(workdir: Path, name: str, pid: int, extra: dict[str, Any] | None = None) -> None:
    state_file = workdir / "state.json"
    state = json.loads(state_file.read_text())
    state["pids"][name] = pid  # added last, so `cluster down` stops it first
    state.update(extra or {})
    state_file.write_text(json.dumps(state, indent=2))


def _prometheus(workdir: Path, source: Path) -> str:
    state = json.loads((workdir / "state.json").read_text())
    if "prometheus" in state:
        return str(state["prometheus"])
    _step("backfilling the bundled traces into Prometheus as history that ends now")
    queues = traces.prepare_queues(source, workdir / "traces")
    history = {name: traces.read_directory(queues[name]) for name in ("tweets", "elb")}
    server = PrometheusServer(workdir / "prometheus", port=free_port(29090))
    backfill(history, server.data_dir, end_at_s=time.time() // 60 * 60)
    server.start()
    assert server.managed is not None
    _record(workdir, "prometheus", server.managed.pid, {"prometheus": server.url})
    return server.url


def _operator(cluster: LocalCluster, workdir: Path) -> int:
    state = json.loads((workdir / "state.json").read_text())
    if "operator" in state["pids"]:
        return int(state["pids"]["operator"])
    _step("running the operator as ServiceAccount foreshard-system/foreshard-operator")
    config = service_account_kubeconfig(
        cluster, "foreshard-system", "foreshard-operator", workdir / "operator.kubeconfig"
    )
    metrics = free_port(28080)
    managed = spawn(
        "operator",
        [
            sys.executable,
            "-m",
            "foreshard.cli",
            "run",
            "--metrics-port",
            str(metrics),
            "--liveness-port",
            str(free_port(28081, {metrics})),
        ],
        workdir / "logs",
        env={"KUBECONFIG": str(config), "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    _record(workdir, "operator", managed.pid, {"operator_metrics": f"http://127.0.0.1:{metrics}/metrics"})
    return managed.pid


def _apply_sample(cluster: LocalCluster, prometheus_url: str) -> None:
    body = yaml.safe_load((REPO / "manifests" / "samples" / "shardallocation.yaml").read_text())
    body["metadata"]["namespace"] = NAMESPACE
    body["spec"]["minShards"] = 3
    body["spec"]["forecast"]["prometheusURL"] = prometheus_url
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))


def _wait_ready(cluster: LocalCluster, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = cluster.kubectl(
            "get",
            "shalloc",
            "orders",
            "-n",
            NAMESPACE,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        ).stdout
        if out == "True":
            return True
        time.sleep(1)
    return False


def _print_summary(cluster: LocalCluster, summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(cluster.kubectl("get", "shalloc,statefulset,pods", "-n", NAMESPACE).stdout)
    print(f"Control plane   {summary['server']}")
    print(f"Prometheus      {summary['prometheus']}  (try: foreshard_messages_published_total)")
    print(
        f"Operator        pid {summary['operator_pid']}, logs in {cluster.workdir / 'logs' / 'operator.log'}"
    )
    print("\nUse kubectl against it:")
    print(f"  export KUBECONFIG={summary['kubeconfig']}")
    print(f"  alias kubectl={summary['kubectl']}   # the kubectl built with the cluster (any 1.33+ works)")
    print(f"  kubectl get shalloc -n {NAMESPACE}; kubectl describe shalloc orders -n {NAMESPACE}")
    print("\nStop everything with `make down`.")
