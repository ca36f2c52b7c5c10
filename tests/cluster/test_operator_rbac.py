"""The operator's own ServiceAccount gets what it calls and a 403 for everything else: no secrets,
no deletes, and in namespaced mode no other namespace and nothing cluster-scoped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from operator_helpers import NAMESPACE, assert_no_rbac_denials, install, running_operator, wait_for

from foreshard.localcluster.cluster import LocalCluster, service_account_kubeconfig

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "helm" / "foreshard"
SYSTEM, WATCHED, OTHER = "nsop-system", "rbac-watched", "rbac-other"


def as_account(cluster: LocalCluster, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(cluster.toolchain.path("kubectl")), f"--kubeconfig={config}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def can(cluster: LocalCluster, config: Path, verb: str, resource: str, *where: str) -> bool:
    """`kubectl auth can-i` as the account; `resource` may name a subresource as `kind/sub`."""
    kind, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    answer = as_account(cluster, config, "auth", "can-i", verb, kind, *extra, *where).stdout.strip()
    assert answer in {"yes", "no"}, answer
    return answer == "yes"


def queue(name: str, namespace: str) -> str:
    body = {
        "apiVersion": "foreshard.io/v1alpha1",
        "kind": "ShardAllocation",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"minShards": 1, "maxShards": 2},
    }
    return yaml.safe_dump(body)


def test_the_cluster_wide_operator_is_denied_secrets_deletes_and_scaling_others_workloads(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    install(local_cluster)
    local_cluster.kubectl("create", "secret", "generic", "db-password", "-n", NAMESPACE, "--from-literal=p=x")
    config = service_account_kubeconfig(
        local_cluster, "foreshard-system", "foreshard-operator", tmp_path / "kc"
    )

    for verb, resource in [
        ("list", "shardallocations"),
        ("patch", "shardallocations/status"),
        ("update", "shardallocations/finalizers"),
        ("patch", "statefulsets"),
        ("create", "events"),
        ("watch", "pods"),
    ]:
        assert can(local_cluster, config, verb, resource, "-A"), f"needs {verb} {resource}"
    for verb, resource in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("delete", "statefulsets"),
        ("delete", "services"),
        ("delete", "pods"),
        ("delete", "shardallocations"),
        ("update", "statefulsets"),
        ("delete", "deployments"),
        ("create", "deployments"),
        ("patch", "deployments"),
        ("create", "pods"),
        ("create", "rolebindings"),
        ("get", "configmaps"),
    ]:
        assert not can(local_cluster, config, verb, resource, "-A"), f"may {verb} {resource}"

    read = as_account(local_cluster, config, "get", "secret", "db-password", "-n", NAMESPACE)
    assert read.returncode != 0 and "Forbidden" in read.stderr
    assert "system:serviceaccount:foreshard-system:foreshard-operator" in read.stderr
    delete = as_account(local_cluster, config, "delete", "secret", "db-password", "-n", NAMESPACE)
    assert "Forbidden" in delete.stderr
    assert local_cluster.kubectl("get", "secret", "db-password", "-n", NAMESPACE, check=False).returncode == 0


def namespaced_release(cluster: LocalCluster) -> None:
    """The chart's RBAC for watchNamespaces=[rbac-watched]: a Role there and nothing else."""
    helm = str(cluster.toolchain.path("helm"))
    command = [helm, "template", "nsop", str(CHART), "--namespace", SYSTEM]
    command += ["--set", f"watchNamespaces={{{WATCHED}}}", "--show-only", "templates/rbac.yaml"]
    rendered = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding"], kinds
    for namespace in (SYSTEM, WATCHED, OTHER):
        cluster.kubectl("create", "namespace", namespace, check=False)
    cluster.kubectl("apply", "-f", "-", stdin=rendered)  # each object names its namespace


def test_the_namespaced_operator_reconciles_its_namespace_and_is_denied_every_other(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    namespaced_release(local_cluster)
    config = service_account_kubeconfig(local_cluster, SYSTEM, "nsop-foreshard", tmp_path / "kc")
    assert can(local_cluster, config, "patch", "shardallocations", "-n", WATCHED)
    assert can(local_cluster, config, "create", "kopfpeerings.kopf.dev", "-n", WATCHED)
    for where in (["-n", OTHER], ["-n", SYSTEM], ["-A"]):
        assert not can(local_cluster, config, "list", "shardallocations", *where), where
        assert not can(local_cluster, config, "patch", "statefulsets", *where), where
    for verb, resource in [
        ("list", "customresourcedefinitions"),
        ("list", "namespaces"),
        ("list", "clusterkopfpeerings.kopf.dev"),
        ("get", "secrets"),
        ("delete", "statefulsets"),
        ("delete", "shardallocations"),
    ]:
        assert not can(local_cluster, config, verb, resource, "-n", WATCHED), f"may {verb} {resource}"

    local_cluster.kubectl("apply", "-f", "-", stdin=queue("watched", WATCHED))
    local_cluster.kubectl("apply", "-f", "-", stdin=queue("elsewhere", OTHER))
    args = ["--namespace", WATCHED, "--peering", "foreshard"]
    with running_operator(
        local_cluster, tmp_path, args=args, account=(SYSTEM, "nsop-foreshard"), installed=True
    ) as op:

        def reconciled() -> bool:
            found = local_cluster.kubectl("get", "statefulset", "watched-shard", "-n", WATCHED, check=False)
            return found.returncode == 0

        wait_for(
            reconciled,
            60,
            "the watched namespace's queue to get its shards",
            lambda: op["log"].read_text()[-2000:],
        )
        status = local_cluster.kubectl(
            "get", "shalloc", "watched", "-n", WATCHED, "-o", "jsonpath={.status.shards.desired}"
        ).stdout
        assert status == "1"
        peering = local_cluster.kubectl(
            "get", "kopfpeerings.kopf.dev", "foreshard", "-n", WATCHED, check=False
        )
        assert peering.returncode == 0, "the operator creates its KopfPeering in the watched namespace"
        assert_no_rbac_denials(op["log"])
    other = local_cluster.kubectl("get", "statefulset", "elsewhere-shard", "-n", OTHER, check=False)
    assert other.returncode != 0, "a queue outside watchNamespaces was reconciled"
