"""`foreshard demo`: the main job on the embedded default.

Starts (or reuses) the local control plane with its pod runner, a real Prometheus holding the
bundled traces as history that ends now (and scraping every broker the runner starts), installs
the CRDs and the operator's RBAC, runs the operator as its own ServiceAccount, creates a sample
queue of three shards, waits until its brokers serve the operator's routing, then sends real keyed
traffic through one of them with the public SDK and checks that a consumer group got every message
once and in per-key order. Everything keeps running in the background; `make down` stops it all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from foreshard import traces
from foreshard.api.names import ANNOTATION_BROKER_ENDPOINT
from foreshard.localcluster import devenv, traffic
from foreshard.localcluster.cluster import LocalCluster, Ports
from foreshard.localcluster.process import free_port
from foreshard.localcluster.prometheus import PrometheusServer, backfill
from foreshard_broker.routing import RoutingTable

REPO = Path(__file__).resolve().parents[3]
NAMESPACE = "demo"
QUEUE = "orders"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="control plane + Prometheus + CRDs + operator + a sample queue"
    )
    parser.add_argument("--workdir", type=Path, default=Path("build/cluster"))
    parser.add_argument("--traces", type=Path, default=traces.BUNDLED, help="default: data/traces")
    parser.add_argument("--messages", type=int, default=20_000, help="traffic check size (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.set_defaults(func=_demo)


def _step(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    cluster = _cluster(workdir)
    prometheus_url = _prometheus(workdir, args.traces)
    _step("installing the CRDs, the operator's RBAC and the brokers' admin token Secret")
    devenv.install(cluster, NAMESPACE)
    operator_pid = _operator(cluster, workdir)
    _step(f"creating the sample queue `{QUEUE}` (3 shards) in namespace {NAMESPACE}")
    _apply_sample(cluster, prometheus_url)
    _step("waiting for the shard pods' brokers to be Ready and serve the operator's routing")
    table = _wait_routed(cluster, timeout_s=180)
    brokers = _brokers(cluster)
    summary: dict[str, Any] = {
        "server": cluster.server,
        "kubeconfig": str(cluster.kubeconfig),
        "kubectl": str(cluster.toolchain.path("kubectl")),
        "prometheus": prometheus_url,
        "operator_pid": operator_pid,
        "queue": QUEUE,
        "namespace": NAMESPACE,
        "queue_ready": table is not None,
        "routing_epoch": table.epoch if table is not None else None,
        "brokers": brokers,
    }
    if table is not None and args.messages:
        endpoints = dict(table.endpoints)
        _step(f"publishing {args.messages} keyed messages through one broker, consuming them as a group")
        verdict = asyncio.run(traffic.check(endpoints, args.messages, min(1000, args.messages), "demo-check"))
        summary["traffic"] = verdict.to_json()
    _print_summary(cluster, summary, args.json)
    passed = table is not None and summary.get("traffic", {}).get("ok", not args.messages)
    return 0 if passed else 1


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
    server = PrometheusServer(
        workdir / "prometheus", port=free_port(29090), watch_dirs=[workdir / "scrape-targets"]
    )
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
    managed, metrics = devenv.start_operator(cluster, workdir, metrics_port=28080)
    _record(workdir, "operator", managed.pid, {"operator_metrics": f"http://127.0.0.1:{metrics}/metrics"})
    return managed.pid


def _apply_sample(cluster: LocalCluster, prometheus_url: str) -> None:
    body = yaml.safe_load((REPO / "manifests" / "samples" / "shardallocation.yaml").read_text())
    body["metadata"]["namespace"] = NAMESPACE
    body["spec"]["minShards"] = 3
    body["spec"]["forecast"]["prometheusURL"] = prometheus_url
    # a claim per shard (the runner binds it to a directory), so a restarted pod keeps its data
    body["spec"].setdefault("template", {})["storage"] = {"size": "1Gi"}
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))


def _wait_routed(cluster: LocalCluster, timeout_s: float) -> RoutingTable | None:
    """The queue's routing table once Ready and Routed are both True (None on timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        table = devenv.routed(cluster, NAMESPACE, QUEUE)
        if table is not None:
            return table
        time.sleep(1)
    return None


def _brokers(cluster: LocalCluster) -> dict[str, str]:
    """Pod name -> the gRPC endpoint a client on this machine can use."""
    out = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"foreshard.io/queue={QUEUE}", "-o", "json")
    return {
        pod["metadata"]["name"]: (pod["metadata"].get("annotations") or {}).get(
            ANNOTATION_BROKER_ENDPOINT, ""
        )
        for pod in json.loads(out.stdout)["items"]
    }


def _print_summary(cluster: LocalCluster, summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(cluster.kubectl("get", "shalloc,statefulset,pods", "-n", NAMESPACE).stdout)
    for pod, endpoint in summary["brokers"].items():
        print(f"Broker          {pod}  {endpoint}")
    checked = summary.get("traffic")
    if checked:
        print(
            f"Traffic         {checked['messages']} messages over {checked['keys']} keys through one broker: "
            f"{checked['lost']} lost, {checked['duplicated']} duplicated, {checked['reordered']} keys out of "
            f"order; busiest shard stored {checked['busiest_shard_share']:.0%}"
        )
    print(f"Control plane   {summary['server']}")
    print(f"Prometheus      {summary['prometheus']}  (try: foreshard_messages_published_total)")
    print(
        f"Operator        pid {summary['operator_pid']}, logs in {cluster.workdir / 'logs' / 'operator.log'}"
    )
    print("\nUse kubectl against it:")
    print(f"  export KUBECONFIG={summary['kubeconfig']}")
    print(f"  alias kubectl={summary['kubectl']}   # the kubectl built with the cluster (any 1.33+ works)")
    print(f"  kubectl get shalloc -n {NAMESPACE}; kubectl describe shalloc {QUEUE} -n {NAMESPACE}")
    first = next(iter(summary["brokers"].values()), "<endpoint>")
    print("\nPublish with the SDK (any broker bootstraps; the operator's table routes each key):")
    print(
        "  .venv/bin/python -c 'from foreshard_broker.client.sync import SyncProducer; "
        "from foreshard_broker.client.grpc_transport import GrpcTransport; "
        f'p = SyncProducer(GrpcTransport, ["{first}"]); p.publish("customer-1", b"hello"); p.close()\''
    )
    print("\nStop everything with `make down`.")
