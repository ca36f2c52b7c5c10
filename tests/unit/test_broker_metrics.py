"""The broker's /metrics families the operator reads: names, labels, the key cap, restarts."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from foreshard_broker.routing import slot_of
from foreshard_broker.server.admin import Admin
from foreshard_broker.server.broker import Broker
from foreshard_broker.server.config import Batch, BrokerConfig
from foreshard_broker.server.metrics import BrokerMetrics
from foreshard_broker.storage import MemoryStorage

pytestmark = pytest.mark.unit

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: BrokerMetrics) -> Samples:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def started(storage: MemoryStorage) -> tuple[Broker, BrokerMetrics]:
    broker = Broker(BrokerConfig(num_slots=16), storage)
    broker.open()
    return broker, BrokerMetrics(Admin(broker), queue="orders", max_keys=1)


async def test_published_and_acked_counters_carry_the_operators_labels_and_cap_keys() -> None:
    broker, metrics = started(MemoryStorage())
    await broker.create_group("billing", latest=False)
    await broker.publish("p", 1, Batch.of([("a", b"xx")] * 3 + [("b", b"y"), ("c", b"z")]))
    delivered = await broker.fetch("billing", "c1", 10, 0, 0)
    await broker.ack("billing", [d.message.offset for d in delivered])
    samples = scrape(metrics)

    published = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "foreshard_messages_published_total"
    }
    a = (("key", "a"), ("queue", "orders"), ("slot", str(slot_of("a", 16))))
    assert published[a] == 3, "the heaviest key is itemised"
    rest = {labels: value for labels, value in published.items() if labels != a}
    assert all(dict(labels)["key"] == "" for labels in rest), "keys past the cap have no key label"
    assert sum(rest.values()) == 2, "and are still counted, per slot"
    assert {dict(labels)["slot"] for labels in rest} == {str(slot_of(k, 16)) for k in ("b", "c")}
    assert samples[("foreshard_messages_acked_total", (("group", "billing"), ("queue", "orders")))] == 3
    backlog = ("foreshard_broker_key_backlog_messages", a)
    assert samples[backlog] == 2, "one of a's three messages was acked (one delivery per key at a time)"


async def test_a_restarted_broker_counts_arrivals_from_zero_but_keeps_its_backlog() -> None:
    storage = MemoryStorage()
    broker, _ = started(storage)
    await broker.publish("p", 1, Batch.of([("a", b"xx")] * 4))
    await broker.storage.close()
    again, metrics = started(storage)
    await again.publish("p", 2, Batch.of([("a", b"xx")]))
    samples = scrape(metrics)
    a = (("key", "a"), ("queue", "orders"), ("slot", str(slot_of("a", 16))))
    assert samples[("foreshard_messages_published_total", a)] == 1, "replayed messages are not arrivals"
    assert samples[("foreshard_broker_key_backlog_messages", a)] == 5
    assert again.state.backlog("a") == (5, 10)


async def test_label_values_are_escaped_so_any_key_reads_back_exactly() -> None:
    broker, metrics = started(MemoryStorage())
    odd = 'say "hi"\\now\nthen'
    await broker.publish("p", 1, Batch.of([(odd, b"x")] * 2))
    samples = scrape(metrics)
    labels = (("key", odd), ("queue", "orders"), ("slot", str(slot_of(odd, 16))))
    assert samples[("foreshard_messages_published_total", labels)] == 2


async def test_broker_wide_gauges_carry_the_queue_and_the_shard_so_alerts_can_join_them() -> None:
    broker = Broker(BrokerConfig(shard=2, num_slots=16), MemoryStorage())
    broker.open()
    metrics = BrokerMetrics(Admin(broker), queue="orders")
    await broker.publish("p", 1, Batch.of([("a", b"xx")]))
    samples = scrape(metrics)
    where = (("queue", "orders"), ("shard", "2"))
    assert samples[("foreshard_broker_retained_messages", where)] == 1
    assert samples[("foreshard_broker_routing_epoch", where)] == broker.routing.epoch
    assert samples[("foreshard_broker_pause_seconds_total", where)] == 0
