"""Arrival and acknowledgement history from Prometheus, as `Series` of counts per step.

Arrivals are the counter `foreshard_messages_published_total{queue, key | slot}`; acks are
`foreshard_messages_acked_total{queue, group}`. Each interval's count is
`sum by (label) (increase(counter[step]))` evaluated at the interval's end: summing increases
(not raw counters) keeps a restart of one broker from looking like a drop of the whole key,
and with samples at interval boundaries (as backfilled history has) the increase is exact.

Query building and response parsing are pure functions; `PrometheusHistory` only adds the
client (prometheus-api-client) and splits long ranges under Prometheus's 11,000-points limit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from foreshard.core.planning.capacity import LoadSample
from foreshard.core.series import Series

ARRIVALS = "foreshard_messages_published_total"
ACKS = "foreshard_messages_acked_total"
MAX_POINTS = 10_000  # per series per query; Prometheus refuses more than 11,000
_META = set(".^$*+?()[]{}|\\")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class PrometheusUnreachable(RuntimeError):
    """The query failed (connection, HTTP or PromQL error); the message says which and where."""


class RangeQuerier(Protocol):
    """The two methods of prometheus_api_client.PrometheusConnect this adapter uses."""

    def custom_query_range(
        self, query: str, start_time: datetime, end_time: datetime, step: str
    ) -> list[dict[str, Any]]: ...

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


def quote(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def regex_literal(value: str) -> str:
    """`value` as an RE2 literal; only metacharacters are escaped (RE2 rejects `\\ ` and the like)."""
    return "".join("\\" + c if c in _META else c for c in value)


def matcher(label: str, values: Sequence[str] | None) -> str:
    """`label="v"` for one value, `label=~"^(a|b)$"` for several, empty for all."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{label}={quote(values[0])}"
    return f"{label}=~{quote('^(' + '|'.join(regex_literal(v) for v in sorted(values)) + ')$')}"


def increase_query(
    metric: str, fixed: Mapping[str, str], by: str, only: Sequence[str] | None, step_s: float
) -> str:
    if not _LABEL.fullmatch(by):
        raise ValueError(f"{by!r} is not a Prometheus label name")
    matchers = [f"{name}={quote(value)}" for name, value in sorted(fixed.items())]
    matchers += [m for m in [matcher(by, only)] if m]
    return f"sum by ({by}) (increase({metric}{{{','.join(matchers)}}}[{duration(step_s)}]))"


def arrival_query(queue: str, step_s: float, by: str = "key", only: Sequence[str] | None = None) -> str:
    """Messages published per interval, per key (or per slot with by="slot")."""
    return increase_query(ARRIVALS, {"queue": queue}, by, only, step_s)


def ack_query(queue: str, step_s: float, groups: Sequence[str] | None = None) -> str:
    """Messages acknowledged per interval, per consumer group."""
    return increase_query(ACKS, {"queue": queue}, "group", groups, step_s)


def total_query(queue: str, step_s: float) -> str:
    """Messages published per interval over the whole queue (one series: the tail is total - tracked)."""
    return f"sum (increase({ARRIVALS}{{queue={quote(queue)}}}[{duration(step_s)}]))"


def volume_query(queue: str, window_s: float, by: str = "key") -> str:
    """Messages per key over one window ending at the evaluation time (ranks the heaviest keys)."""
    return increase_query(ARRIVALS, {"queue": queue}, by, None, window_s)


def backlog_query(queue: str, groups: Sequence[str], window_s: float = 3600.0) -> str:
    """Per group: messages published minus messages the group acknowledged (all time, all brokers).

    Both counters live on the same brokers, so a broker restart resets both sides together. Each
    counter is read as its last sample within `window_s`: a scrape that is a little late (or
    history that ends a few minutes ago) still counts.
    """
    w = duration(window_s)
    published = f"scalar(sum(last_over_time({ARRIVALS}{{queue={quote(queue)}}}[{w}])))"
    matchers = ",".join([f"queue={quote(queue)}", *[m for m in [matcher("group", groups)] if m]])
    acked = f"sum by (group) (last_over_time({ACKS}{{{matchers}}}[{w}]))"
    return f"clamp_min({published} - {acked}, 0)"


CPU = "process_cpu_seconds_total"
BYTES = "foreshard_broker_published_bytes_total"


def load_queries(queue: str, window_s: float) -> dict[str, str]:
    """Per broker (instance): CPU cores used, messages/s and bytes/s stored, for capacity.learn.

    The process counter has no queue label: `and on (instance)` keeps the brokers that export the
    queue's arrivals, so other processes Prometheus scrapes are left out.
    """
    q, w = quote(queue), duration(window_s)
    brokers = f"group by (instance) ({ARRIVALS}{{queue={q}}})"
    return {
        "cpu": f"sum by (instance) (rate({CPU}[{w}]) and on (instance) {brokers})",
        "messages": f"sum by (instance) (rate({ARRIVALS}{{queue={q}}}[{w}]))",
        "bytes": f"sum by (instance) (rate({BYTES}{{queue={q}}}[{w}]))",
    }


def parse_vector(vector: Sequence[Mapping[str, Any]], label: str) -> dict[str, float]:
    """An instant-query vector to label value -> number (NaN answers dropped)."""
    out = {}
    for item in vector:
        value = float(item.get("value", [0, "NaN"])[1])
        if math.isfinite(value):
            out[str(item.get("metric", {}).get(label, ""))] = value
    return dict(sorted(out.items()))


def duration(step_s: float) -> str:
    if step_s <= 0 or step_s != int(step_s):
        raise ValueError(f"a step must be a positive whole number of seconds, got {step_s}")
    return f"{int(step_s)}s"


def windows(start_s: float, end_s: float, step_s: float) -> list[tuple[float, float]]:
    """Evaluation times (interval ends) from start_s+step to end_s, split under MAX_POINTS each."""
    count = math.floor((end_s - start_s) / step_s + 1e-9)
    out = []
    for first in range(1, count + 1, MAX_POINTS):
        last = min(count, first + MAX_POINTS - 1)
        out.append((start_s + first * step_s, start_s + last * step_s))
    return out


def parse(
    matrix: Sequence[Mapping[str, Any]], label: str, start_s: float, end_s: float, step_s: float
) -> dict[str, Series]:
    """A range-query matrix (values at interval ends) to one Series per label value.

    The grid is every interval from start_s to end_s; intervals without a sample stay NaN
    (missing is not zero: a scrape gap must not read as silence).
    """
    count = math.floor((end_s - start_s) / step_s + 1e-9)
    out: dict[str, Series] = {}
    for item in matrix:
        name = str(item.get("metric", {}).get(label, ""))
        values = out[name].values if name in out else np.full(count, np.nan)
        for stamp, text in item.get("values", []):
            index = round((float(stamp) - start_s) / step_s) - 1
            if 0 <= index < count:
                values[index] = float(text)
        out[name] = Series(name, start_s, step_s, values)
    return dict(sorted(out.items()))


def merge(
    parts: Sequence[Mapping[str, Series]], start_s: float, step_s: float, count: int
) -> dict[str, Series]:
    keys = sorted({key for part in parts for key in part})
    out = {}
    for key in keys:
        values = np.full(count, np.nan)
        for part in parts:
            if key in part:
                present = np.isfinite(part[key].values)
                values[present] = part[key].values[present]
        out[key] = Series(key, start_s, step_s, values)
    return out


@dataclass
class PrometheusHistory:
    client: RangeQuerier

    def arrivals(
        self,
        queue: str,
        start_s: float,
        end_s: float,
        step_s: float,
        by: str = "key",
        only: Sequence[str] | None = None,
    ) -> dict[str, Series]:
        """Counts per interval per key (or slot) in [start_s, end_s), on the grid anchored at start_s."""
        return self._fetch(arrival_query(queue, step_s, by, only), by, start_s, end_s, step_s)

    def acks(
        self, queue: str, start_s: float, end_s: float, step_s: float, groups: Sequence[str] | None = None
    ) -> dict[str, Series]:
        """Acknowledged messages per interval per consumer group."""
        return self._fetch(ack_query(queue, step_s, groups), "group", start_s, end_s, step_s)

    def total(self, queue: str, start_s: float, end_s: float, step_s: float) -> Series:
        """Counts per interval over every key of the queue (NaN where nothing was scraped)."""
        found = self._fetch(total_query(queue, step_s), "__none__", start_s, end_s, step_s)
        count = math.floor((end_s - start_s) / step_s + 1e-9)
        return next(iter(found.values()), Series("", start_s, step_s, np.full(count, np.nan)))

    def volumes(self, queue: str, end_s: float, window_s: float) -> dict[str, float]:
        """Messages per key over [end_s - window_s, end_s]."""
        return self._instant(volume_query(queue, window_s), "key", end_s)

    def backlogs(self, queue: str, groups: Sequence[str], at_s: float) -> dict[str, float]:
        """Messages each consumer group has still to acknowledge, now."""
        return self._instant(backlog_query(queue, groups), "group", at_s)

    def load(
        self, queue: str, start_s: float, end_s: float, step_s: float, window_s: float
    ) -> list[LoadSample]:
        """One LoadSample per broker and interval in which it stored messages."""
        parts = {
            name: self._fetch(query, "instance", start_s, end_s, step_s)
            for name, query in load_queries(queue, window_s).items()
        }
        samples = []
        for instance, messages in parts["messages"].items():
            cpu, stored = parts["cpu"].get(instance), parts["bytes"].get(instance)
            if cpu is None:
                continue
            sizes = stored.values if stored is not None else np.zeros(len(messages))
            for rate, cores, size in zip(messages.values, cpu.values, sizes, strict=True):
                if np.isfinite(rate) and np.isfinite(cores) and rate > 0:
                    samples.append(
                        LoadSample(float(rate), float(size) if np.isfinite(size) else 0.0, float(cores))
                    )
        return samples

    def _instant(self, query: str, label: str, at_s: float) -> dict[str, float]:
        try:
            vector = self.client.custom_query(query, params={"time": f"{at_s:.3f}"})
        except Exception as error:  # as in _fetch: every client error means the same to the caller
            raise PrometheusUnreachable(
                f"instant query failed ({type(error).__name__}: {error}): {query}"
            ) from error
        return parse_vector(vector, label)

    def _fetch(
        self, query: str, label: str, start_s: float, end_s: float, step_s: float
    ) -> dict[str, Series]:
        count = math.floor((end_s - start_s) / step_s + 1e-9)
        parts = []
        for first, last in windows(start_s, end_s, step_s):
            try:
                matrix = self.client.custom_query_range(query, _time(first), _time(last), duration(step_s))
            except Exception as error:  # the client raises requests, urllib3 and its own errors alike
                raise PrometheusUnreachable(
                    f"range query failed ({type(error).__name__}: {error}): {query}"
                ) from error
            parts.append(parse(matrix, label, start_s, end_s, step_s))
        return merge(parts, start_s, step_s, count)


def connect(url: str, timeout_s: int = 30, retries: int | None = None) -> PrometheusHistory:
    """A history reader for the Prometheus at `url` (no request is made until a query).

    `retries` (None: the client's default, with backoff) bounds how long a dead server holds the
    caller; a reconcile pass retries on its own timer and must not hold a worker thread for long.
    """
    from prometheus_api_client import PrometheusConnect
    from urllib3.util.retry import Retry

    retry = None if retries is None else Retry(total=retries, backoff_factor=0.0)
    return PrometheusHistory(PrometheusConnect(url=url, disable_ssl=True, retry=retry, timeout=timeout_s))


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
