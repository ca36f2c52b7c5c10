"""The operator from its image: `foreshard run` in a container, as its ServiceAccount, reconciles a queue."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import NAMESPACE, REPO, assert_no_rbac_denials, get, install, scrape, wait_for

from foreshard.api.names import DEFAULT_BROKER_IMAGE
from foreshard.localcluster import images
from foreshard.localcluster.cluster import LocalCluster, service_account_kubeconfig
from foreshard.localcluster.process import free_port

pytestmark = pytest.mark.cluster

MOUNTED_KUBECONFIG = "/etc/foreshard/kubeconfig"


def container_kubeconfig(cluster: LocalCluster, workdir: Path) -> Path:
    """The operator ServiceAccount's kubeconfig with the CA inlined, readable by the image's user."""
    path = service_account_kubeconfig(cluster, "foreshard-system", "foreshard-operator", workdir / "sa")
    config = yaml.safe_load(path.read_text())
    (entry,) = config["clusters"]
    ca = Path(entry["cluster"].pop("certificate-authority"))
    entry["cluster"]["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    mounted = workdir / "kubeconfig"
    mounted.write_text(yaml.safe_dump(config))
    mounted.chmod(0o644)  # uid 10001 in the container is not the host's root; the token lives 1 h
    return mounted


def as_the_deployment_runs_it() -> tuple[list[str], list[str]]:
    """podman options and `foreshard run` arguments from manifests/deployment.yaml: its user, with
    no passwd entry added for it (a kubelet adds none), and its command (peering included)."""
    spec = yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    context, (container,) = spec["securityContext"], spec["containers"]
    assert container["command"][:2] == ["foreshard", "run"], container["command"]
    user = f"--user={context['runAsUser']}:{context['runAsGroup']}"
    return [user, "--passwd=false"], container["command"][2:]


@contextmanager
def operator_container(cluster: LocalCluster, image: str, workdir: Path) -> Iterator[dict[str, Any]]:
    """The image's entrypoint on the host network (the local API server listens on loopback)."""
    install(cluster)
    name = f"foreshard-operator-test-{os.getpid()}"
    metrics, liveness = free_port(), free_port()
    options = [
        *("--rm", "--name", name, "--network", "host"),
        f"--volume={container_kubeconfig(cluster, workdir)}:{MOUNTED_KUBECONFIG}:ro",
        f"--env=KUBECONFIG={MOUNTED_KUBECONFIG}",
        "--env=FORESHARD_RESYNC_SECONDS=2",
        f"--env=POD_ID={name}",  # the Deployment passes the pod name through the downward API
    ]
    user, args = as_the_deployment_runs_it()
    argv = [*images.PODMAN_RUN, *options, *user, image, *args]
    argv += [f"--metrics-port={metrics}", f"--liveness-port={liveness}"]
    log = workdir / "operator.log"
    with log.open("w") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
    try:
        yield {"name": name, "log": log, "metrics": f"http://127.0.0.1:{metrics}/metrics", "process": process}
    finally:
        subprocess.run(["podman", "stop", "--time", "10", name], capture_output=True, check=False)
        process.wait(timeout=30)


def test_the_operator_image_reconciles_a_queue_as_its_service_account_and_non_root(
    local_cluster: LocalCluster, built_images: dict[str, str], tmp_path: Path
) -> None:
    queue = {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": "from-image", "namespace": NAMESPACE},
        "spec": {"minShards": 2, "maxShards": 4, "capacity": {"messagesPerSecond": 1000}},
    }
    with operator_container(local_cluster, built_images["operator"], tmp_path) as operator:
        local_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(queue))

        def reconciled() -> bool:
            body = get(local_cluster, "shalloc", "from-image")
            observed = (body or {}).get("status", {}).get("observedGeneration")
            created = get(local_cluster, "sts", "from-image-shard") is not None
            return bool(body and created and observed == body["metadata"]["generation"])

        log = operator["log"]
        wait_for(reconciled, 90, "the operator to reconcile the queue", lambda: log.read_text()[-3000:])
        uid = subprocess.run(["podman", "exec", operator["name"], "id", "-u"], capture_output=True, text=True)
        assert uid.stdout.strip() not in ("", "0"), "the operator runs as a non-root user"
        peering = local_cluster.kubectl("get", "clusterkopfpeering", "foreshard", "-o", "json").stdout
        keepalives = yaml.safe_load(peering).get("status", {})
        assert operator["name"] in keepalives, f"its keep-alive is named by POD_ID: {keepalives}"
        assert (
            f'foreshard_operator_desired_shards{{namespace="{NAMESPACE}",queue="from-image"}} 2.0'
            in scrape(operator["metrics"])
        )
        assert operator["process"].poll() is None, "the operator is still running"
    sts = get(local_cluster, "sts", "from-image-shard")
    assert sts is not None and sts["spec"]["replicas"] == 2
    (broker,) = sts["spec"]["template"]["spec"]["containers"]
    assert broker["image"] == DEFAULT_BROKER_IMAGE == built_images["broker"], "shards run the broker image"
    assert_no_rbac_denials(operator["log"])
