"""Who a replica is in the peering object, and which user the operator's pods run as.

kopf's default identity begins with the passwd user name, and a pod whose runAsUser the image's
/etc/passwd lacks (on a real cluster nothing adds one) crashed kopf.run with a KeyError.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from foreshard.cli.run import peering_identity

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_the_identity_is_the_pod_name_the_deployment_passes() -> None:
    assert peering_identity({"POD_ID": "foreshard-operator-7d9-x2"}, "host", 1) == "foreshard-operator-7d9-x2"


def test_without_a_pod_name_two_processes_on_one_host_get_different_identities_without_a_user_name() -> None:
    first, second = peering_identity({}, "laptop", 4711), peering_identity({"POD_ID": ""}, "laptop", 4712)
    assert first != second
    assert first == "laptop/4711"


def image_uid() -> int:
    found = re.search(r"^USER (\d+):(\d+)$", (REPO / "operator" / "Dockerfile").read_text(), re.MULTILINE)
    assert found, "operator/Dockerfile names its user by number"
    return int(found.group(1))


def test_the_manifests_deployment_runs_as_the_images_user_and_names_its_pod_to_kopf() -> None:
    spec = yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    context = spec["securityContext"]
    assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == image_uid()
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    token = next(v for v in spec["volumes"] if v["name"] == "admin-token")
    assert token["secret"]["defaultMode"] == 0o440, "group-readable: the operator reads it through fsGroup"


def test_the_charts_deployment_runs_as_the_images_user_and_names_its_pod_to_kopf() -> None:
    template = (REPO / "helm" / "foreshard" / "templates" / "deployment.yaml").read_text()
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert re.findall(rf"^\s+{key}: (\d+)$", template, re.MULTILINE) == [str(image_uid())], key
    assert re.search(r"- name: POD_ID\n\s+valueFrom: \{fieldRef: \{fieldPath: metadata.name\}\}", template)
    assert re.search(r"defaultMode: 0440\b", template)
