"""Every PromQL expression of the alerts and the dashboard is accepted by the real Prometheus."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from monitoring_queries import (
    PromQLError,
    dashboard_expressions,
    expressions_without_data,
    instant,
    invalid_expressions,
    rule_expressions,
    selectors,
)

from foreshard.localcluster.prometheus import PrometheusServer

pytestmark = pytest.mark.component


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prometheus-queries")) as server:
        yield server


def test_every_alert_and_dashboard_expression_is_valid_promql(prometheus: PrometheusServer) -> None:
    assert len(rule_expressions()) >= 5 and len(dashboard_expressions()) >= 10
    assert invalid_expressions(prometheus.url) == {}


def test_a_broken_expression_is_reported_with_prometheus_own_reason(prometheus: PrometheusServer) -> None:
    with pytest.raises(PromQLError, match="bad_data"):
        instant(prometheus.url, "sum by (queue) (rate(foreshard_messages_published_total[5m])")


def test_the_dashboard_filters_by_queue_and_leaves_no_variable_unsubstituted() -> None:
    for name, expr in dashboard_expressions().items():
        assert "$" not in expr, name
    filtered = [name for name, expr in dashboard_expressions().items() if 'queue=~".*"' in expr]
    assert len(filtered) >= len(dashboard_expressions()) - 1, "only the latency panel spans every queue"


def test_every_expression_has_no_data_on_an_empty_prometheus_and_the_checker_says_which(
    prometheus: PrometheusServer,
) -> None:
    empty = expressions_without_data(prometheus.url)
    assert set(dashboard_expressions()) <= set(empty)
    for alert, expr in rule_expressions().items():
        assert {f"{alert}: {sel}" for sel in selectors(expr)} <= set(empty)
        assert selectors(expr), f"{alert} reads no Foreshard series"


def test_the_checker_stops_reporting_a_selector_once_its_series_exists(prometheus: PrometheusServer) -> None:
    # Prometheus's own /metrics scraped under the operator's job name: `up{job="foreshard-operator"}`
    # now exists while the brokers' job still does not.
    prometheus.add_targets("foreshard-operator", [prometheus.url.removeprefix("http://")])
    deadline = time.monotonic() + 30
    while not instant(prometheus.url, 'up{job="foreshard-operator"}'):
        assert time.monotonic() < deadline, "Prometheus never scraped the target"
        time.sleep(0.5)
    empty = expressions_without_data(prometheus.url)
    assert 'ForeshardOperatorDown: up{job="foreshard-operator"}' not in empty
    assert 'ForeshardBrokerDown: up{job="foreshard-broker"}' in empty
