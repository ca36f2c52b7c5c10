"""The Prometheus adapter's pure parts: PromQL it sends, and how it reads the answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pytest

from foreshard.adapters import prometheus
from foreshard.adapters.prometheus import PrometheusHistory, PrometheusUnreachable

pytestmark = pytest.mark.unit


def test_arrivals_are_summed_increases_per_key_over_one_step() -> None:
    query = prometheus.arrival_query("orders", 300.0)
    assert query == 'sum by (key) (increase(foreshard_messages_published_total{queue="orders"}[300s]))'


def test_several_keys_are_matched_exactly_and_escaped() -> None:
    query = prometheus.arrival_query("q", 60.0, only=["a.b", 'say "hi"'])
    assert 'key=~"^(a\\\\.b|say \\"hi\\")$"' in query


def test_slots_and_consumer_groups_are_other_labels() -> None:
    assert "sum by (slot)" in prometheus.arrival_query("q", 60.0, by="slot")
    ack = prometheus.ack_query("q", 60.0, ["billing"])
    assert ack == 'sum by (group) (increase(foreshard_messages_acked_total{queue="q",group="billing"}[60s]))'


@pytest.mark.parametrize("bad", ["key}", "1key", ""])
def test_a_label_that_is_not_a_label_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="label name"):
        prometheus.arrival_query("q", 60.0, by=bad)


@pytest.mark.parametrize("step", [0.0, -5.0, 1.5])
def test_steps_must_be_whole_positive_seconds(step: float) -> None:
    with pytest.raises(ValueError, match="whole number of seconds"):
        prometheus.duration(step)


def test_long_ranges_are_split_under_the_points_limit() -> None:
    parts = prometheus.windows(0.0, 25_000 * 60.0, 60.0)
    assert len(parts) == 3
    assert parts[0] == (60.0, 10_000 * 60.0)
    assert parts[-1][1] == 25_000 * 60.0
    assert all((last - first) / 60.0 + 1 <= prometheus.MAX_POINTS for first, last in parts)


def test_a_matrix_becomes_counts_on_the_grid_with_gaps_as_nan() -> None:
    matrix = [
        {"metric": {"key": "b"}, "values": [[1060, "3"], [1180, "5"]]},
        {"metric": {"key": "a"}, "values": [[1060, "1"], [1120, "2"], [1180, "NaN"]]},
    ]
    out = prometheus.parse(matrix, "key", 1000.0, 1180.0, 60.0)
    assert list(out) == ["a", "b"]
    assert out["a"].start_s == 1000.0
    assert out["a"].values[:2] == pytest.approx([1.0, 2.0])
    assert np.isnan(out["a"].values[2])
    assert np.isnan(out["b"].values[1])


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, float, float, str]] = []
        self.fail = fail

    def custom_query_range(
        self, query: str, start_time: datetime, end_time: datetime, step: str
    ) -> list[dict[str, Any]]:
        if self.fail:
            raise ConnectionError("connection refused")
        self.calls.append((query, start_time.timestamp(), end_time.timestamp(), step))
        stamps = np.arange(start_time.timestamp(), end_time.timestamp() + 1, 60.0)
        return [{"metric": {"key": "k"}, "values": [[s, "7"] for s in stamps]}]


def test_history_reads_every_window_and_joins_them() -> None:
    client = Recorder()
    out = PrometheusHistory(client).arrivals("q", 0.0, 12_000 * 60.0, 60.0)
    assert len(client.calls) == 2
    assert len(out["k"]) == 12_000
    assert np.all(out["k"].values == 7.0)


def test_a_failed_query_is_reported_as_prometheus_unreachable() -> None:
    with pytest.raises(PrometheusUnreachable, match="connection refused"):
        PrometheusHistory(Recorder(fail=True)).acks("q", 0.0, 600.0, 60.0)
