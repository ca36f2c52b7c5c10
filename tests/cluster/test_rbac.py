"""RBAC is really on: a ServiceAccount token is allowed what its Role grants and nothing else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from foreshard.localcluster.cluster import LocalCluster, service_account_kubeconfig

pytestmark = pytest.mark.cluster

NARROW = """
apiVersion: v1
kind: Namespace
metadata: {name: rbac-check}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader, namespace: rbac-check}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: configmap-reader, namespace: rbac-check}
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: rbac-check}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: rbac-check}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: visible, namespace: rbac-check}
data: {hello: world}
"""


def as_reader(cluster: LocalCluster, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(cluster.toolchain.path("kubectl")), f"--kubeconfig={config}", "-n", "rbac-check", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_service_account_gets_what_its_role_grants_and_403_for_the_rest(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    local_cluster.kubectl("apply", "-f", "-", stdin=NARROW)
    config = service_account_kubeconfig(local_cluster, "rbac-check", "reader", tmp_path / "reader.kubeconfig")
    assert yaml.safe_load(config.read_text())["users"][0]["user"]["token"]

    allowed = as_reader(local_cluster, config, "get", "configmap", "visible", "-o", "jsonpath={.data.hello}")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == "world"

    denied = as_reader(local_cluster, config, "get", "secrets")
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and "system:serviceaccount:rbac-check:reader" in denied.stderr

    delete = as_reader(local_cluster, config, "delete", "configmap", "visible")
    assert "Forbidden" in delete.stderr
    assert local_cluster.kubectl("get", "configmap", "visible", "-n", "rbac-check").returncode == 0
