"""Prometheus exposition: cheap histograms on the hot path, per-key/slot families built at scrape time.

Per-key counters live in plain dicts (LoadTracker, BrokerState) and are turned into metric families
only when Prometheus scrapes, so a publish never pays for label lookups. Keys are capped to the
`max_keys` heaviest to bound cardinality; slot families are always complete.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from foreshard_broker.server.admin import Admin
from foreshard_broker.server.load import Totals

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BrokerMetrics:
    def __init__(self, admin: Admin, max_keys: int = 1000) -> None:
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
        self.registry.register(_StateCollector(admin, max_keys))
        admin.broker.observe_publish = self.publish_latency.observe
        admin.broker.observe_deliveries = self.observe_deliveries

    def observe_deliveries(self, publish_times_ms: list[int]) -> None:
        now_ms = time.time() * 1000
        observe = self.delivery_latency.observe
        for published in publish_times_ms:
            observe(max(now_ms - published, 0.0) / 1000)


class _StateCollector(Collector):
    def __init__(self, admin: Admin, max_keys: int) -> None:
        self.admin = admin
        self.max_keys = max_keys

    def collect(self) -> Iterator[Metric]:
        broker = self.admin.broker
        state, totals = broker.state, broker.load.totals
        keys = sorted(totals.arrived, key=totals.arrived.__getitem__, reverse=True)[: self.max_keys]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "arrivals": CounterMetricFamily(
                "foreshard_broker_key_arrivals", "Messages stored per key.", labels=["key", "slot"]
            ),
            "acks": CounterMetricFamily(
                "foreshard_broker_key_acks", "Acknowledgements per key, all groups.", labels=["key", "slot"]
            ),
            "backlog": GaugeMetricFamily(
                "foreshard_broker_key_backlog_messages",
                "Retained unacked messages per key.",
                labels=["key", "slot"],
            ),
        }
        for key in keys:
            labels = [key, str(broker.load.slot(key))]
            families["arrivals"].add_metric(labels, totals.arrived[key])
            families["acks"].add_metric(labels, totals.acked.get(key, 0))
            families["backlog"].add_metric(labels, state.backlog(key)[0])
        yield from families.values()
        yield from self._slots(totals)
        yield from self._broker()

    def _slots(self, totals: Totals) -> Iterator[Metric]:
        load = self.admin.broker.load
        arrivals = CounterMetricFamily(
            "foreshard_broker_slot_arrivals", "Messages stored per slot.", labels=["slot"]
        )
        acks = CounterMetricFamily(
            "foreshard_broker_slot_acks", "Acknowledgements per slot.", labels=["slot"]
        )
        per_slot: dict[int, list[int]] = {}
        for key, count in totals.arrived.items():
            entry = per_slot.setdefault(load.slot(key), [0, 0])
            entry[0] += count
            entry[1] += totals.acked.get(key, 0)
        for slot in sorted(per_slot):
            arrivals.add_metric([str(slot)], per_slot[slot][0])
            acks.add_metric([str(slot)], per_slot[slot][1])
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
