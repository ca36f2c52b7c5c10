"""The CRDs on the real API server: structural schemas, CEL rules and their messages."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from foreshard.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


def test_the_crds_are_established_with_their_short_names(local_cluster: LocalCluster) -> None:
    names = local_cluster.kubectl("api-resources", "--api-group=foreshard.io", "-o", "wide").stdout
    assert "shalloc" in names and "opf" in names


def test_the_samples_are_accepted(local_cluster: LocalCluster) -> None:
    local_cluster.kubectl("create", "namespace", "samples")
    applied = local_cluster.kubectl("apply", "-n", "samples", "-f", str(REPO / "manifests" / "samples"))
    assert "shardallocation.foreshard.io/orders created" in applied.stdout
    assert "orderparamforecast.foreshard.io/orders-checkout created" in applied.stdout


def test_there_are_at_least_five_invalid_samples() -> None:
    assert len(INVALID) >= 5


@pytest.mark.parametrize("sample", INVALID, ids=[p.stem for p in INVALID])
def test_an_invalid_sample_is_rejected_with_a_message_a_person_can_act_on(
    local_cluster: LocalCluster, sample: Path
) -> None:
    result = local_cluster.kubectl("apply", "-n", "default", "-f", str(sample), check=False)
    assert result.returncode != 0, f"{sample.name} was accepted"
    assert expected_message(sample) in result.stderr


def test_the_slot_count_cannot_change_after_creation(local_cluster: LocalCluster) -> None:
    body = yaml.safe_load((REPO / "manifests" / "samples" / "shardallocation.yaml").read_text())
    body["metadata"]["name"] = "immutable-slots"
    local_cluster.kubectl("apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(body))
    body["spec"]["slots"] = 2048
    result = local_cluster.kubectl(
        "apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(body), check=False
    )
    assert result.returncode != 0
    assert "slots is immutable; create a new queue to change the slot count" in result.stderr


def test_the_storage_cannot_be_added_or_changed_after_creation(local_cluster: LocalCluster) -> None:
    body = yaml.safe_load((REPO / "manifests" / "samples" / "shardallocation.yaml").read_text())
    body["metadata"]["name"] = "immutable-storage"
    body["spec"].setdefault("template", {}).pop("storage", None)
    local_cluster.kubectl("apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(body))
    body["spec"]["template"]["storage"] = {"size": "1Gi"}
    result = local_cluster.kubectl(
        "apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(body), check=False
    )
    assert result.returncode != 0
    assert "template.storage cannot be added, removed or changed on an existing queue" in result.stderr
    body["spec"]["template"].pop("storage")
    body["spec"]["minShards"] = 2  # other edits still go through
    local_cluster.kubectl("apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(body))


def test_status_is_not_writable_through_the_main_resource(local_cluster: LocalCluster) -> None:
    body = yaml.safe_load((REPO / "manifests" / "samples" / "shardallocation.yaml").read_text())
    body["metadata"]["name"] = "status-ignored"
    body["status"] = {"shards": {"desired": 99}}
    local_cluster.kubectl("apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(body))
    shown = local_cluster.kubectl(
        "get", "shalloc", "status-ignored", "-n", "default", "-o", "jsonpath={.status.shards.desired}"
    )
    assert shown.stdout == ""  # the status subresource drops status written with the spec


def test_kubectl_explain_shows_field_descriptions(local_cluster: LocalCluster) -> None:
    explained = subprocess.run(
        [
            str(local_cluster.toolchain.path("kubectl")),
            f"--kubeconfig={local_cluster.kubeconfig}",
            "explain",
            "shardallocation.spec.minShards",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Fewest shard pods" in explained
