"""The Helm chart with the real helm binary: lint, schema, server-side dry run, install, uninstall."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from foreshard.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "helm" / "foreshard"


def helm(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(cluster.toolchain.path("helm")), f"--kubeconfig={cluster.kubeconfig}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_the_chart_lints_clean(local_cluster: LocalCluster) -> None:
    out = helm(local_cluster, "lint", str(CHART), "--strict").stdout
    assert "0 chart(s) failed" in out


def test_values_outside_the_schema_are_refused_with_the_field_named(local_cluster: LocalCluster) -> None:
    result = helm(local_cluster, "template", "t", str(CHART), "--set", "resyncSeconds=0", check=False)
    assert result.returncode != 0
    assert "resyncSeconds" in result.stderr and "minimum" in result.stderr


def test_the_rendered_chart_passes_a_server_side_dry_run(local_cluster: LocalCluster) -> None:
    rendered = helm(local_cluster, "template", "dry", str(CHART), "--namespace", "default").stdout
    assert rendered.count("kind: CustomResourceDefinition") == 4  # two of Foreshard's, two of kopf's
    assert rendered.count("helm.sh/resource-policy: keep") == 4
    applied = local_cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "deployment.apps/dry-foreshard created (server dry run)" in applied.stdout


def test_helm_install_runs_the_operator_deployment_and_uninstall_removes_it(
    local_cluster: LocalCluster,
) -> None:
    local_cluster.kubectl("create", "namespace", "helm-test")
    # The CRDs are already on the cluster (applied by kubectl), so the release must not own them.
    helm(
        local_cluster,
        "install",
        "fs",
        str(CHART),
        "--namespace",
        "helm-test",
        "--set",
        "crds.enabled=false",
        "--wait",
        "--timeout",
        "90s",
    )
    deployment = json.loads(
        local_cluster.kubectl("get", "deploy", "fs-foreshard", "-n", "helm-test", "-o", "json").stdout
    )
    assert deployment["status"].get("readyReplicas") == 1
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "fs-foreshard"
    assert (
        json.loads(helm(local_cluster, "list", "-n", "helm-test", "-o", "json").stdout)[0]["status"]
        == "deployed"
    )

    helm(local_cluster, "uninstall", "fs", "--namespace", "helm-test", "--wait")
    deadline = time.monotonic() + 60
    while (
        local_cluster.kubectl("get", "deploy", "fs-foreshard", "-n", "helm-test", check=False).returncode == 0
    ):
        assert time.monotonic() < deadline, "the Deployment outlived helm uninstall"
        time.sleep(0.5)
