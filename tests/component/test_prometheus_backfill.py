"""Backfilled history in the real Prometheus answers range queries with the traces' own counts."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.component

MAX_POINTS = 10_000  # Prometheus refuses range queries of more than 11k points


def range_query(url: str, query: str, start: float, end: float, step: float) -> dict[str, list[float]]:
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=60) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return {r["metric"]["key"]: [float(v) for _, v in r["values"]] for r in body["data"]["result"]}


def test_every_tweet_series_reads_back_interval_by_interval(prometheus_with_traces: Any) -> None:
    tweets = prometheus_with_traces.queues["tweets"]
    shift = prometheus_with_traces.shifts["tweets"]
    step = tweets[0].step_s
    query = 'increase(foreshard_messages_published_total{queue="tweets"}[5m])'
    compared = 0
    for series in tweets:
        first_end = series.start_s + shift + step  # the counter's value at the end of interval 0
        for offset in range(0, len(series), MAX_POINTS):
            count = min(MAX_POINTS, len(series) - offset)
            start = first_end + offset * step
            got = range_query(prometheus_with_traces.url, query, start, start + (count - 1) * step, step)
            expected = series.values[offset : offset + count]
            assert np.array_equal(np.array(got[series.key]), expected), series.key
            compared += count
    assert compared == sum(len(s) for s in tweets) > 150_000


def test_a_gap_in_a_trace_stays_a_gap_rather_than_a_zero(prometheus_with_traces: Any) -> None:
    elb = prometheus_with_traces.queues["elb"][0]
    missing = np.flatnonzero(np.isnan(elb.values))
    assert len(missing) == 8  # the README's eight missing five-minute points
    m = int(missing[0])
    shift = prometheus_with_traces.shifts["elb"]
    end_of = lambda i: elb.start_s + shift + (i + 1) * elb.step_s  # noqa: E731
    url = prometheus_with_traces.url
    one_step = range_query(
        url,
        "increase(foreshard_messages_published_total{queue='elb'}[5m])",
        end_of(m - 1),
        end_of(m + 1),
        elb.step_s,
    )[elb.key]
    # The interval before the gap reads back; the missing interval has no sample, so neither it
    # nor the next one has a one-step increase: absent, never a made-up zero.
    assert one_step == [elb.values[m - 1]]
    # Over two steps the counter still carries the next interval's real count.
    two_steps = range_query(
        url,
        "increase(foreshard_messages_published_total{queue='elb'}[10m])",
        end_of(m + 1),
        end_of(m + 1),
        elb.step_s,
    )[elb.key]
    assert two_steps == [elb.values[m + 1]]


def test_the_history_ends_where_the_fixture_says(prometheus_with_traces: Any) -> None:
    tweets = prometheus_with_traces.queues["tweets"]
    latest = max(tweets, key=lambda s: s.end_s)
    end = latest.end_s + prometheus_with_traces.shifts["tweets"]
    assert abs(end - prometheus_with_traces.backfilled_at) < 60
    got = range_query(
        prometheus_with_traces.url,
        f"increase(foreshard_messages_published_total{{key='{latest.key}'}}[5m])",
        end - 3 * latest.step_s,
        end,
        latest.step_s,
    )
    assert got[latest.key] == list(latest.values[-4:])
