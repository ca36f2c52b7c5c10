"""The alert rules with the real promtool: they check, and every alert has a firing and a quiet case."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from monitoring_queries import RULES, rule_expressions

pytestmark = pytest.mark.component

CASES = Path(__file__).parent / "promtool" / "alerts.test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run scripts/bootstrap.sh (Debian package prometheus)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout


def test_the_alerts_unit_tests_pass_under_promtool() -> None:
    result = promtool("test", "rules", str(CASES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(CASES.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == set(rule_expressions()), "an alert without a firing case"
    assert quiet == set(rule_expressions()), "an alert without a case where it must stay quiet"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_in_the_operations_guide() -> None:
    guide = (RULES.parents[3] / "docs" / "operations.md").read_text()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            anchor = rule["annotations"]["runbook"].split(":")[0].split("#")[1]
            assert f"### {anchor.replace('-', ' ')}" in guide.lower(), f"{rule['alert']}: no runbook section"


def test_a_broken_rule_fails_its_promtool_case(tmp_path: Path) -> None:
    # the cases must be able to fail: a threshold raised tenfold silences the stuck-migration alert
    rules = tmp_path / "helm" / "foreshard" / "files" / "prometheus-rules.yaml"
    rules.parent.mkdir(parents=True)
    rules.write_text(RULES.read_text().replace("> 600", "> 6000"))
    cases = tmp_path / "tests" / "component" / "promtool" / CASES.name
    cases.parent.mkdir(parents=True)
    cases.write_text(CASES.read_text())
    result = promtool("test", "rules", str(cases))
    assert result.returncode != 0
    assert "ForeshardMigrationStuck" in result.stdout + result.stderr
