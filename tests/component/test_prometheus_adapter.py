"""The Prometheus adapter against the real server, with history backfilled by promtool.

One server per module: a real trace (ELB requests, with its gaps), a synthetic queue with
keys whose counts are known exactly, and a 30-minute series, all written as the counter the
brokers export. The adapter must read back exactly what was written, per key and interval.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from foreshard.adapters.prometheus import PrometheusHistory, PrometheusUnreachable, connect
from foreshard.core.forecasting import forecast
from foreshard.core.series import Series
from foreshard.localcluster.prometheus import PrometheusServer, backfill
from foreshard.traces import read_series

pytestmark = pytest.mark.component

ELB_FILE = "elb_request_count_8c0756.csv"
END_AT = 1_760_000_400.0  # a fixed, grid-aligned "now" a few weeks in the past; retention is long
STEP = 300.0


def synthetic() -> list[Series]:
    start = END_AT - 3 * 86_400.0
    steps = round(3 * 86_400.0 / STEP)
    counts = np.arange(steps, dtype=np.float64) % 17
    sparse = np.where(np.arange(steps) % 5 == 0, 2.0, 0.0)
    return [Series("alpha", start, STEP, counts), Series("beta", start, STEP, sparse)]


@pytest.fixture(scope="module")
def elb(canonical_traces: dict[str, Path]) -> Path:
    return canonical_traces["elb"] / ELB_FILE


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, elb: Path
) -> Iterator[tuple[PrometheusServer, dict[str, float]]]:
    work = tmp_path_factory.mktemp("prometheus")
    queues = {"orders": synthetic()}
    shifts = backfill(queues, work / "data", end_at_s=END_AT)
    shifts |= backfill({"elb": [read_series(elb)]}, work / "data", end_at_s=END_AT)
    with PrometheusServer(work) as running:
        yield running, shifts


def test_arrivals_read_back_exactly_the_counts_that_were_backfilled(
    server: tuple[PrometheusServer, dict[str, float]],
) -> None:
    running, _ = server
    written = {s.key: s for s in synthetic()}
    start = written["alpha"].start_s
    got = connect(running.url).arrivals("orders", start, END_AT, STEP)
    assert sorted(got) == ["alpha", "beta"]
    for key, series in written.items():
        assert got[key].start_s == start
        assert np.array_equal(got[key].values, series.values), key


def test_one_key_can_be_asked_for_alone(server: tuple[PrometheusServer, dict[str, float]]) -> None:
    running, _ = server
    start = END_AT - 86_400.0
    got = connect(running.url).arrivals("orders", start, END_AT, STEP, only=["beta"])
    assert list(got) == ["beta"]
    assert np.nansum(got["beta"].values) == pytest.approx(2.0 * 288 / 5, abs=2.0)


def test_a_real_trace_with_gaps_reads_back_with_the_gaps_missing_not_zero(
    server: tuple[PrometheusServer, dict[str, float]], elb: Path
) -> None:
    running, shifts = server
    original = read_series(elb)
    start = original.start_s + shifts["elb"]
    got = connect(running.url).arrivals("elb", start, start + len(original) * STEP, STEP)[
        "elb_request_count_8c0756"
    ]
    both = np.isfinite(original.values) & np.isfinite(got.values)
    assert both.sum() >= len(original) - 2 * int(np.isnan(original.values).sum()) - 1
    assert np.array_equal(got.values[both], original.values[both])
    assert np.isnan(got.values).sum() >= np.isnan(original.values).sum()


def test_history_from_prometheus_feeds_the_forecaster(
    server: tuple[PrometheusServer, dict[str, float]],
) -> None:
    running, _ = server
    got = connect(running.url).arrivals("orders", END_AT - 2 * 86_400.0, END_AT, STEP)
    result = forecast(got["alpha"], 12)
    assert result.start_s == END_AT
    assert np.all(np.isfinite(result.mean)) and np.all(result.quantiles[0.99] >= result.quantiles[0.5])


def test_a_consumer_group_without_acks_reads_as_no_series(
    server: tuple[PrometheusServer, dict[str, float]],
) -> None:
    running, _ = server
    assert connect(running.url).acks("orders", END_AT - 3600.0, END_AT, STEP, ["billing"]) == {}


def test_an_unreachable_server_is_reported_not_raised_raw() -> None:
    history: PrometheusHistory = connect("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(PrometheusUnreachable):
        history.arrivals("orders", END_AT - 600.0, END_AT, STEP)
