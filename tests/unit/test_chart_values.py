"""The chart's values: every key documented with a `# --` comment, every key in the schema, and the
dashboard a Grafana sidecar can load."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

CHART = Path(__file__).resolve().parents[2] / "helm" / "foreshard"
KEY = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):")


def documented_keys() -> dict[str, bool]:
    """Dotted key -> whether a `# --` comment sits on the line(s) right above it (or its parent's)."""
    out: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    comment = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = True
            continue
        if stripped.startswith("#"):
            continue
        match = KEY.match(line)
        if not match:
            comment = comment and not stripped
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        out[dotted] = comment
        stack.append((indent, key))
        comment = False
    return out


def leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in {"resources", "clientLabels"}:
            found += leaves(value, dotted + ".")
        else:
            found.append(dotted)
    return found


def test_every_value_has_a_comment_above_it() -> None:
    documented = documented_keys()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in leaves(values) if not documented.get(key)]
    assert missing == []


def schema_at(schema: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in dotted.split("."):
        properties = (node or {}).get("properties", {})
        node = properties.get(part)
    return node


def test_every_value_is_in_the_schema_down_to_its_leaves() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert [key for key in leaves(values) if schema_at(schema, key) is None] == []


def test_the_dashboard_has_unique_panels_each_with_prometheus_targets() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"]), panel[
            "title"
        ]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "queue"}
