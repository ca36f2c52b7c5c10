"""Prometheus exposition: cheap histograms on the hot path, per-key/slot families built at scrape time.

Per-key counters live in plain dicts (LoadTracker, BrokerState) and are turned into metric families
only when Prometheus scrapes, so a publish never pays for label lookups. Keys are capped to the
`max_keys` heaviest to bound cardinality; slot families are always complete.

Two families are the operator's contract (`operator/foreshard/adapters/prometheus.py` queries them
by name): `foreshard_messages_published_total{queue,key,slot}` and
`foreshard_messages_acked_total{queue,group}`. Every family carries the `queue` label (`--queue`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from foreshard_broker.server.admin import Admin
from foreshard_broker.server.load import LoadTracker, Totals

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BrokerMetrics:
    def __init__(self, admin: Admin, queue: str = "default", max_keys: int = 1000) -> None:
        self.registry = CollectorRegistry()
        self.publish_latency = Histogram(
            "foreshard_broker_publish_latency_seconds",
            "Time from receiving a publish batch to its durable acknowledgement.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "foreshard_broker_delivery_latency_seconds",
            "Time from publish to first delivery of a message.",
            buckets=(*LATENCY_BUCKETS, 10.0, 30.0, 60.0),
            registry=self.registry,
        )
        self.registry.register(_StateCollector(admin, queue, max_keys))
        admin.broker.observe_publish = self.publish_latency.observe
        admin.broker.observe_deliveries = self.observe_deliveries

    def observe_deliveries(self, publish_times_ms: list[int]) -> None:
        now_ms = time.time() * 1000
        observe = self.delivery_latency.observe
        for published in publish_times_ms:
            observe(max(now_ms - published, 0.0) / 1000)


class _StateCollector(Collector):
    def __init__(self, admin: Admin, queue: str, max_keys: int) -> None:
        self.admin = admin
        self.queue = queue
        self.max_keys = max_keys

    def collect(self) -> Iterator[Metric]:
        broker = self.admin.broker
        state, load, totals, queue = broker.state, broker.load, broker.load.totals, self.queue
        keys = sorted(totals.arrived, key=totals.arrived.__getitem__, reverse=True)
        shown, rest = keys[: self.max_keys], keys[self.max_keys :]
        per_key = ["queue", "key", "slot"]
        published = CounterMetricFamily(
            "foreshard_messages_published",
            "Messages stored per key (the operator's arrival history); keys past the cardinality "
            'cap are summed per slot under key="".',
            labels=per_key,
        )
        acks = CounterMetricFamily(
            "foreshard_broker_key_acks", "Acknowledgements per key, all groups.", labels=per_key
        )
        backlog = GaugeMetricFamily(
            "foreshard_broker_key_backlog_messages", "Retained unacked messages per key.", labels=per_key
        )
        for key in shown:
            labels = [queue, key, str(load.slot(key))]
            published.add_metric(labels, totals.arrived[key])
            acks.add_metric(labels, totals.acked.get(key, 0))
            backlog.add_metric(labels, state.backlog(key)[0])
        for slot, count in sorted(_per_slot(load, totals.arrived, rest).items()):
            published.add_metric([queue, "", str(slot)], count)
        group_acks = CounterMetricFamily(
            "foreshard_messages_acked",
            "Messages acknowledged per consumer group (the operator's consumption history).",
            labels=["queue", "group"],
        )
        for group, count in sorted(load.group_acks.items()):
            group_acks.add_metric([queue, group], count)
        yield from (published, acks, backlog, group_acks)
        yield from self._slots(totals)
        yield from self._broker()

    def _slots(self, totals: Totals) -> Iterator[Metric]:
        load, labels = self.admin.broker.load, ["queue", "slot"]
        arrivals = CounterMetricFamily(
            "foreshard_broker_slot_arrivals", "Messages stored per slot.", labels=labels
        )
        acks = CounterMetricFamily("foreshard_broker_slot_acks", "Acknowledgements per slot.", labels=labels)
        arrived = _per_slot(load, totals.arrived, totals.arrived)
        acked = _per_slot(load, totals.acked, totals.acked)
        for slot in sorted(arrived):
            arrivals.add_metric([self.queue, str(slot)], arrived[slot])
            acks.add_metric([self.queue, str(slot)], acked.get(slot, 0))
        yield arrivals
        yield acks

    def _broker(self) -> Iterator[Metric]:
        broker, admin = self.admin.broker, self.admin
        yield GaugeMetricFamily(
            "foreshard_broker_retained_messages", "Unacked messages held.", broker.state.retained_count
        )
        yield GaugeMetricFamily(
            "foreshard_broker_retained_bytes", "Unacked payload bytes held.", broker.state.retained_bytes
        )
        yield GaugeMetricFamily(
            "foreshard_broker_routing_epoch", "Routing epoch served.", broker.routing.epoch
        )
        yield GaugeMetricFamily(
            "foreshard_broker_paused_slots", "Slots paused now.", len(broker.paused_slots)
        )
        yield GaugeMetricFamily("foreshard_broker_draining", "1 while draining.", int(broker.draining))
        yield CounterMetricFamily(
            "foreshard_broker_pause_seconds",
            "Seconds slots and keys spent paused, summed.",
            admin.pause_seconds(time.monotonic()),
        )


def _per_slot(load: LoadTracker, counts: Mapping[str, int], keys: Iterable[str]) -> dict[int, int]:
    out: dict[int, int] = {}
    for key in keys:
        slot = load.slot(key)
        out[slot] = out.get(slot, 0) + counts[key]
    return out
