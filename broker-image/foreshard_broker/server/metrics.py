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

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from foreshard_broker.server.admin import Admin
from foreshard_broker.server.load import LoadTracker

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
        self.registry.register(_StateCollector(admin, queue))
        # process_cpu_seconds_total and friends: the operator's capacity.learn divides CPU by messages
        ProcessCollector(registry=self.registry)
        self.admin, self.queue, self.max_keys = admin, queue, max_keys
        self.unshown = UnshownCounter()
        admin.broker.observe_publish = self.publish_latency.observe
        admin.broker.observe_deliveries = self.observe_deliveries

    def render(self) -> bytes:
        """The /metrics page: the registry, then the per-key and per-slot families.

        Those are rendered here rather than by prometheus_client, which spends about 10 us per
        labelled sample: with 1000 keys and 1000 slots a scrape held the event loop for ~45 ms.
        """
        return generate_latest(self.registry) + "".join(self._families()).encode()

    def _families(self) -> Iterator[str]:
        broker, queue = self.admin.broker, _escape(self.queue)
        state, load, totals = broker.state, broker.load, broker.load.totals
        keys = sorted(totals.arrived, key=totals.arrived.__getitem__, reverse=True)
        shown, rest = keys[: self.max_keys], keys[self.max_keys :]
        labels = {key: f'key="{_escape(key)}",queue="{queue}",slot="{load.slot(key)}"' for key in shown}
        published = [(labels[key], totals.arrived[key]) for key in shown]
        # Keys past the cap and keys folded into their slot (cold, no backlog) are summed per slot,
        # without the counts their own series already showed (UnshownCounter).
        unshown = _per_slot(load, totals.arrived, rest)
        for slot, (count, _, _) in load.folded_totals().items():
            unshown[slot] = unshown.get(slot, 0) + count
        shown_now = {key: (load.slot(key), totals.arrived[key]) for key in shown}
        published += [
            (f'key="",queue="{queue}",slot="{slot}"', count)
            for slot, count in sorted(self.unshown.exported(unshown, shown_now, rest).items())
        ]
        yield from _family(
            "foreshard_messages_published_total",
            "counter",
            "Messages stored per key (the operator's arrival history); keys past the cardinality "
            'cap are summed per slot under key="".',
            published,
        )
        yield from _family(
            "foreshard_broker_published_bytes_total",
            "counter",
            "Payload bytes stored, all keys (the operator's capacity.learn reads bytes per message).",
            [(f'queue="{queue}"', sum(totals.arrived_bytes.values()))],
        )
        yield from _family(
            "foreshard_messages_acked_total",
            "counter",
            "Messages acknowledged per consumer group (the operator's consumption history).",
            [(f'group="{_escape(g)}",queue="{queue}"', n) for g, n in sorted(load.group_acks.items())],
        )
        yield from _family(
            "foreshard_broker_key_acks_total",
            "counter",
            "Acknowledgements per key, all groups.",
            [(labels[key], totals.acked.get(key, 0)) for key in shown],
        )
        yield from _family(
            "foreshard_broker_key_backlog_messages",
            "gauge",
            "Retained unacked messages per key.",
            [(labels[key], state.backlog(key)[0]) for key in shown],
        )
        arrived, acked = totals.slot_arrived, totals.slot_acked
        # Both: after a restart, replayed messages are acked without having arrived since start-up.
        slots = {slot: f'queue="{queue}",slot="{slot}"' for slot in sorted({*arrived, *acked})}
        yield from _family(
            "foreshard_broker_slot_arrivals_total",
            "counter",
            "Messages stored per slot.",
            [(slots[slot], arrived.get(slot, 0)) for slot in slots],
        )
        yield from _family(
            "foreshard_broker_slot_acks_total",
            "counter",
            "Acknowledgements per slot.",
            [(slots[slot], acked.get(slot, 0)) for slot in slots],
        )

    def observe_deliveries(self, publish_times_ms: list[int]) -> None:
        now_ms = time.time() * 1000
        observe = self.delivery_latency.observe
        for published in publish_times_ms:
            observe(max(now_ms - published, 0.0) / 1000)


class _StateCollector(Collector):
    """The broker-wide gauges (few samples: prometheus_client renders them).

    Each carries `queue` and `shard`, so an alert can compare a broker with the operator's view of
    its queue (the routing epoch) without relying on how the scrape labels its targets.
    """

    def __init__(self, admin: Admin, queue: str) -> None:
        self.admin, self.queue = admin, queue

    def collect(self) -> Iterator[Metric]:
        broker, state = self.admin.broker, self.admin.broker.state
        labels = [self.queue, str(broker.config.shard)]
        gauges = [
            ("foreshard_broker_retained_messages", "Unacked messages held.", state.retained_count),
            ("foreshard_broker_retained_bytes", "Unacked payload bytes held.", state.retained_bytes),
            ("foreshard_broker_routing_epoch", "Routing epoch served.", broker.routing.epoch),
            ("foreshard_broker_paused_slots", "Slots paused now.", len(broker.paused_slots)),
            ("foreshard_broker_draining", "1 while draining.", int(broker.draining)),
            ("foreshard_broker_groups", "Consumer groups.", len(state.groups)),
            (
                "foreshard_broker_tracked_keys",
                "Keys with per-key accounting (active or with backlog); cold ones fold into their slot.",
                broker.load.tracked_keys,
            ),
            (
                "foreshard_broker_storage_failed",
                "1 once a log write or fsync failed.",
                int(bool(broker.failed)),
            ),
        ]
        recovery = getattr(broker.storage, "recovery", None)
        if recovery is not None:
            gauges += [
                (
                    "foreshard_broker_log_damaged_segments",
                    "Last-segment damage found at start-up (a bad record followed by more data; truncated).",
                    recovery.damaged,
                ),
                (
                    "foreshard_broker_log_truncated_bytes",
                    "Bytes of bad log tail truncated at start-up (torn writes and damage).",
                    recovery.truncated_bytes,
                ),
            ]
        for name, help_text, value in gauges:
            gauge = GaugeMetricFamily(name, help_text, labels=["queue", "shard"])
            gauge.add_metric(labels, value)
            yield gauge
        paused = CounterMetricFamily(
            "foreshard_broker_pause_seconds",
            "Seconds slots and keys spent paused, summed.",
            labels=["queue", "shard"],
        )
        paused.add_metric(labels, self.admin.pause_seconds(time.monotonic()))
        yield paused
        dropped = CounterMetricFamily(
            "foreshard_broker_retention_dropped_messages",
            "Messages dropped by retention (age or bytes limit) per group that had not consumed them; "
            'group="" counts messages no group held.',
            labels=["queue", "shard", "group"],
        )
        for group, count in sorted(state.expired.items()):
            dropped.add_metric([*labels, group], count)
        yield dropped


class UnshownCounter:
    """The per-slot `key=""` series, kept a counter of arrivals that no key's own series showed.

    A key leaves its own series when it folds (idle for a window, or past the cap) or drops below
    the `max_keys` heaviest; its count then joins its slot's sum. Exported as is, that sum jumps by
    everything the key ever stored, which `increase()` reads as a burst of new arrivals (seen after
    every slot move: its keys go idle on the source and fold a window later, 400 msg/s where 18
    were offered). So what a key's own series showed at the last scrape is held back from the sum
    when it leaves, and a key that comes back to its own series takes its count along, which is
    held in the sum instead: each slot's series then only grows, and only by real arrivals.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}  # key -> (slot, count) its own series showed
        self._rest: frozenset[str] = frozenset()  # keys past the cap at the last scrape (in the sum)
        self._held: dict[int, int] = {}  # slot -> counts held back from (or kept in) the sum

    def exported(
        self, raw: Mapping[int, int], shown: Mapping[str, tuple[int, int]], rest: Iterable[str]
    ) -> dict[int, int]:
        """`raw`: per slot, the counts of the keys not shown (past the cap, folded); `shown`: each
        shown key's (slot, count); `rest`: the keys past the cap. What each slot's series shows."""
        held = self._held
        for key, (slot, count) in self._last.items():
            if key not in shown:  # left its own series, its count joined the sum
                held[slot] = held.get(slot, 0) + count
        for key, (slot, count) in shown.items():
            if key in self._rest:  # back above the cap: its count left the sum, which keeps it
                held[slot] = held.get(slot, 0) - count
        self._last, self._rest = dict(shown), frozenset(rest)
        slots = {*raw, *(slot for slot, value in held.items() if value)}
        return {slot: raw.get(slot, 0) - held.get(slot, 0) for slot in slots}


def _per_slot(load: LoadTracker, counts: Mapping[str, int], keys: Iterable[str]) -> dict[int, int]:
    out: dict[int, int] = {}
    for key in keys:
        slot = load.slot(key)
        out[slot] = out.get(slot, 0) + counts[key]
    return out


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, int]]) -> Iterator[str]:
    """One family in the Prometheus text format (0.0.4), as prometheus_client would write it."""
    yield f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
    yield "".join([f"{name}{{{labels}}} {value}\n" for labels, value in samples])


def _escape(value: str) -> str:
    """A label value: backslash, double quote and newline escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value
