"""What the demo and the benchmarks set up on a local cluster, in one place.

install(cluster, namespace)    CRDs, the operator's manifests (its Deployment scaled to 0: here
                               it runs as a process), the namespace and its admin token Secret
start_operator(cluster, ...)   `foreshard run` as the foreshard-operator ServiceAccount, finding
                               brokers by the runner's pod annotations, with the cluster's token
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from foreshard.localcluster.cluster import LocalCluster, service_account_kubeconfig
from foreshard.localcluster.process import Managed, free_port, spawn

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
) -> tuple[Managed, int]:
    """The operator process and its metrics port; its log is `<workdir>/logs/<name>.log`."""
    config = service_account_kubeconfig(
        cluster, "foreshard-system", "foreshard-operator", workdir / f"{name}.kubeconfig"
    )
    metrics = free_port(metrics_port)
    argv = [
        sys.executable, "-m", "foreshard.cli", "run",
        "--metrics-port", str(metrics),
        "--liveness-port", str(free_port(None if metrics_port is None else metrics_port + 1, {metrics})),
        # no cluster DNS here: the pod runner writes each broker's address on its pod
        "--broker-endpoints", "annotation",
        "--admin-token-file", str(cluster.admin_token_file),
    ]  # fmt: skip
    environment = {"KUBECONFIG": str(config), "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return spawn(name, argv, workdir / "logs", env=environment), metrics
