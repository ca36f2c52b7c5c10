"""Every PromQL expression Foreshard ships (the alerts and the dashboard), and checks against a Prometheus.

The end-to-end test calls `expressions_without_data(url)` on the Prometheus that scrapes live
brokers and the operator: a dashboard expression must return data as it is; an alert expression
returns data only while it fires, so for alerts each series selector inside it must return data.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "helm" / "foreshard" / "files" / "prometheus-rules.yaml"
DASHBOARD = REPO / "helm" / "foreshard" / "files" / "dashboard.json"
# Grafana's variables, as a query with every queue selected would see them.
SUBSTITUTIONS = {"$__rate_interval": "5m", "$queue": ".*"}
# A series selector: a metric name the project (or Prometheus, `up`) exports, with its matchers.
SELECTOR = re.compile(r"\b(foreshard_[a-z0-9_]+|up)\b(\{[^}]*\})?")


class PromQLError(AssertionError):
    """Prometheus refused the expression; the message is its own."""


def rule_expressions() -> dict[str, str]:
    """Alert name -> expression."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    """'panel title [refId]' -> expression, with Grafana's variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} [{target['refId']}]"] = substitute(target["expr"])
    return out


def substitute(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


def selectors(expr: str) -> list[str]:
    return sorted({match.group(0) for match in SELECTOR.finditer(expr)})


def instant(url: str, expr: str) -> list[dict[str, object]]:
    """The instant query's result vector; PromQLError when Prometheus refuses the expression."""
    query = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:  # 400 for a bad expression, with the reason in the body
        body = json.loads(error.read() or b"{}")
    if body.get("status") != "success":
        raise PromQLError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
    result = body["data"]["result"]
    return list(result) if isinstance(result, list) else [{"scalar": result}]


def invalid_expressions(url: str) -> dict[str, str]:
    """name -> Prometheus's error, for every shipped expression it refuses (empty when all parse)."""
    errors = {}
    for name, expr in {**rule_expressions(), **dashboard_expressions()}.items():
        try:
            instant(url, expr)
        except PromQLError as error:
            errors[name] = str(error)
    return errors


def expressions_without_data(url: str) -> list[str]:
    """Dashboard expressions that return nothing, and alert selectors that match no series."""
    empty = [name for name, expr in dashboard_expressions().items() if not instant(url, expr)]
    for alert, expr in rule_expressions().items():
        empty += [f"{alert}: {sel}" for sel in selectors(expr) if not instant(url, sel)]
    return empty
