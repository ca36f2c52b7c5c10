"""The Helm chart with the real helm binary: lint, schema, every integration rendered and dry-run on
the server, then install, upgrade (a value change that turns the integrations on) and uninstall."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from foreshard.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "foreshard"
# prometheus-operator's CRDs, a pinned copy (see its README): the local cluster has no such operator
MONITORING_CRDS = Path(__file__).parent / "crds" / "prometheus-operator"
EVERYTHING_ON = [
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.dashboard.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.namespaces={default}",
]


def helm(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(cluster.toolchain.path("helm")), f"--kubeconfig={cluster.kubeconfig}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def documents(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def monitoring_crds(local_cluster: LocalCluster) -> None:
    local_cluster.kubectl("apply", "--server-side", "-f", str(MONITORING_CRDS))
    local_cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "--timeout=60s",
    )


def test_the_chart_lints_clean_with_and_without_every_integration(local_cluster: LocalCluster) -> None:
    assert "0 chart(s) failed" in helm(local_cluster, "lint", str(CHART), "--strict").stdout
    out = helm(local_cluster, "lint", str(CHART), "--strict", *sets(EVERYTHING_ON)).stdout
    assert "0 chart(s) failed" in out


def test_values_outside_the_schema_are_refused_with_the_field_named(local_cluster: LocalCluster) -> None:
    result = helm(local_cluster, "template", "t", str(CHART), "--set", "resyncSeconds=0", check=False)
    assert result.returncode != 0
    assert "resyncSeconds" in result.stderr and "minimum" in result.stderr
    typo = helm(
        local_cluster, "template", "t", str(CHART), "--set", "metrics.dashbord.enabled=true", check=False
    )
    assert typo.returncode != 0 and "dashbord" in typo.stderr


def test_a_network_policy_without_namespaces_in_cluster_wide_mode_is_refused(
    local_cluster: LocalCluster,
) -> None:
    result = helm(
        local_cluster, "template", "t", str(CHART), "--set", "networkPolicy.enabled=true", check=False
    )
    assert result.returncode != 0 and "networkPolicy.namespaces" in result.stderr


def test_the_chart_with_every_integration_on_passes_a_server_side_dry_run(
    local_cluster: LocalCluster, monitoring_crds: None, tmp_path: Path
) -> None:
    rendered = helm(
        local_cluster, "template", "dry", str(CHART), "--namespace", "default", *sets(EVERYTHING_ON)
    ).stdout
    docs = documents(rendered)
    assert len(of_kind(docs, "CustomResourceDefinition")) == 4  # two of Foreshard's, two of kopf's
    assert rendered.count("helm.sh/resource-policy: keep") == 4
    monitors = {d["metadata"]["name"]: d for d in of_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {"dry-foreshard-operator", "dry-foreshard-brokers"}
    assert monitors["dry-foreshard-brokers"]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == (
        "foreshard-broker"
    )
    (dashboard,) = [
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert json.loads(dashboard["data"]["foreshard.json"])["panels"]
    (policy,) = of_kind(docs, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == "default"
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "--peering" in deployment["spec"]["template"]["spec"]["containers"][0]["command"]

    (rule,) = of_kind(docs, "PrometheusRule")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    promtool = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert promtool.returncode == 0 and "SUCCESS" in promtool.stdout, promtool.stdout + promtool.stderr

    # CRDs first (the same apply cannot validate their objects against kinds it has not made yet)
    crds = "\n---\n".join(yaml.safe_dump(d) for d in of_kind(docs, "CustomResourceDefinition"))
    local_cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=crds)
    rest = "\n---\n".join(yaml.safe_dump(d) for d in docs if d["kind"] != "CustomResourceDefinition")
    applied = local_cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rest).stdout
    for created in [
        "deployment.apps/dry-foreshard",
        "servicemonitor.monitoring.coreos.com/dry-foreshard-brokers",
        "prometheusrule.monitoring.coreos.com/dry-foreshard",
        "configmap/dry-foreshard-dashboard",
        "networkpolicy.networking.k8s.io/dry-foreshard-brokers",
        "clusterrole.rbac.authorization.k8s.io/dry-foreshard",
    ]:
        assert f"{created} created (server dry run)" in applied, applied


def test_namespaced_mode_renders_a_role_per_namespace_and_no_cluster_role(
    local_cluster: LocalCluster,
) -> None:
    rendered = helm(local_cluster, "template", "ns", str(CHART), "--set", "watchNamespaces={a,b}").stdout
    docs = documents(rendered)
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    assert sorted(d["metadata"]["namespace"] for d in of_kind(docs, "Role")) == ["a", "b"]
    assert sorted(d["metadata"]["namespace"] for d in of_kind(docs, "RoleBinding")) == ["a", "b"]
    command = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--namespace") + 1] == "a" and "b" in command


def adopt(cluster: LocalCluster, release: str, namespace: str) -> None:
    """The session's CRDs were applied with kubectl; let the release own them as a user's would."""
    for crd in sorted(p.name for p in (REPO / "crds").glob("*.yaml")):
        name = yaml.safe_load((REPO / "crds" / crd).read_text())["metadata"]["name"]
        cluster.kubectl("label", "crd", name, "--overwrite", "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl(
            "annotate",
            "crd",
            name,
            "--overwrite",
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )


def deployment(cluster: LocalCluster, namespace: str) -> dict[str, Any] | None:
    found = cluster.kubectl("get", "deploy", "fs-foreshard", "-n", namespace, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def test_install_upgrade_and_uninstall_keep_the_crds_when_asked(
    local_cluster: LocalCluster, monitoring_crds: None
) -> None:
    namespace = "helm-test"
    local_cluster.kubectl("create", "namespace", namespace)
    adopt(local_cluster, "fs", namespace)
    helm(local_cluster, "install", "fs", str(CHART), "--namespace", namespace, "--wait", "--timeout", "90s")
    installed = deployment(local_cluster, namespace)
    assert installed is not None and installed["status"].get("readyReplicas") == 2
    assert installed["spec"]["template"]["spec"]["serviceAccountName"] == "fs-foreshard"

    upgrade = ["--set", "resyncSeconds=15", *sets(EVERYTHING_ON[:3])]
    helm(
        local_cluster,
        "upgrade",
        "fs",
        str(CHART),
        "--namespace",
        namespace,
        "--reuse-values",
        *upgrade,
        "--wait",
    )
    upgraded = deployment(local_cluster, namespace)
    assert upgraded is not None
    env = {e["name"]: e.get("value") for e in upgraded["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FORESHARD_RESYNC_SECONDS"] == "15"
    for kind, name in [
        ("servicemonitor", "fs-foreshard-brokers"),
        ("prometheusrule", "fs-foreshard"),
        ("configmap", "fs-foreshard-dashboard"),
    ]:
        assert local_cluster.kubectl("get", kind, name, "-n", namespace, check=False).returncode == 0, kind
    (release,) = json.loads(helm(local_cluster, "list", "-n", namespace, "-o", "json").stdout)
    assert (release["status"], release["revision"]) == ("deployed", "2")

    helm(local_cluster, "uninstall", "fs", "--namespace", namespace, "--wait")
    deadline = time.monotonic() + 60
    while deployment(local_cluster, namespace) is not None:
        assert time.monotonic() < deadline, "the Deployment outlived helm uninstall"
        time.sleep(0.5)
    assert local_cluster.kubectl(
        "get", "prometheusrule", "fs-foreshard", "-n", namespace, check=False
    ).returncode
    for crd in ("shardallocations.foreshard.io", "orderparamforecasts.foreshard.io", "kopfpeerings.kopf.dev"):
        assert local_cluster.kubectl("get", "crd", crd, check=False).returncode == 0, f"{crd} was deleted"
