"""Copies that must not drift: the chart's CRDs and RBAC rules against crds/ and manifests/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "foreshard"


@pytest.mark.parametrize("crd", sorted((REPO / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_the_chart_carries_an_identical_copy_of_each_crd(crd: Path) -> None:
    copy = CHART / "files" / "crds" / crd.name
    assert copy.exists(), f"{copy} is missing: copy crds/ into the chart"
    assert copy.read_text() == crd.read_text(), f"{copy} differs from {crd}: copy crds/ into the chart"


def test_the_chart_has_no_crd_that_crds_lacks() -> None:
    assert {p.name for p in (CHART / "files" / "crds").glob("*.yaml")} == {
        p.name for p in (REPO / "crds").glob("*.yaml")
    }


def chart_rules(name: str) -> list[dict[str, object]]:
    rules = yaml.safe_load((CHART / "files" / "rbac" / f"{name}.yaml").read_text())
    assert isinstance(rules, list)
    return rules


def test_the_manifests_cluster_role_grants_exactly_the_charts_cluster_wide_rules() -> None:
    manifests = list(yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text()))
    role = next(d for d in manifests if d["kind"] == "ClusterRole")
    assert role["rules"] == chart_rules("namespaced") + chart_rules("cluster")


def test_no_rule_grants_a_wildcard_secrets_or_a_delete_of_the_workload() -> None:
    for rule in chart_rules("namespaced") + chart_rules("namespaced-peering") + chart_rules("cluster"):
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "secrets" not in rule["resources"], rule
        if set(rule["resources"]) & {"statefulsets", "services", "pods", "shardallocations"}:
            assert not set(rule["verbs"]) & {"delete", "deletecollection", "update"}, rule


def test_every_value_is_covered_by_the_schema() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])


def _nulls(node: object, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _nulls(value, f"{path}/{key}")] + [
            f"{path}/{key}" for key, value in node.items() if value is None
        ]
    if isinstance(node, list):
        return [p for item in node for p in _nulls(item, path)]
    return []


@pytest.mark.parametrize("crd", sorted((REPO / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_no_crd_field_is_null(crd: Path) -> None:
    # an unquoted comma in a flow mapping ({description: a, b}) splits the text into a null key,
    # which a server-side apply refuses as an unknown field
    assert _nulls(yaml.safe_load(crd.read_text())) == []
