"""Acknowledgement Coordinator: batches acks per broker, measures ack rate and processing time.

Acks are not delayed on purpose: the broker holds a key's next message until the current one is
acked, so a linger would slow every key down.  Batching comes for free instead: one ack call per
broker is in flight, and whatever the application acknowledges meanwhile rides on the next call.

The coordinator feeds the :class:`PrefetchAgent` (ack rate, processing time) and exports both as
Prometheus metrics, which the operator reads to forecast each group's consumption:

    foreshard_consumer_acks_total{group}                  counter
    foreshard_consumer_processing_seconds{group}          histogram
    foreshard_consumer_ack_rate{group,consumer}           gauge, messages/s (smoothed)
    foreshard_consumer_prefetch_target_messages{group,consumer}
    foreshard_consumer_buffered_messages{group,consumer}  held: buffered + being processed
    foreshard_consumer_buffered_bytes{group,consumer}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from foreshard_broker.client.prefetch import PrefetchAgent
from foreshard_broker.client.transport import Transport, TransportError

log = logging.getLogger(__name__)
_AckMethod = Callable[[str, str, str, Sequence[str]], Awaitable[None]]

_PROCESSING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass(frozen=True)
class ConsumerMetrics:
    acks: Counter
    processing: Histogram
    ack_rate: Gauge
    target: Gauge
    buffered_messages: Gauge
    buffered_bytes: Gauge


_BY_REGISTRY: dict[int, ConsumerMetrics] = {}


def consumer_metrics(registry: CollectorRegistry | None = None) -> ConsumerMetrics:
    """The SDK's metrics on ``registry`` (default: the process registry), created once per registry."""
    registry = REGISTRY if registry is None else registry
    found = _BY_REGISTRY.get(id(registry))
    if found is not None:
        return found
    labels = ("group", "consumer")
    metrics = ConsumerMetrics(
        acks=Counter("foreshard_consumer_acks", "Messages acknowledged.", ("group",), registry=registry),
        processing=Histogram(
            "foreshard_consumer_processing_seconds",
            "Time from hand-over to the application until its ack.",
            ("group",),
            buckets=_PROCESSING_BUCKETS,
            registry=registry,
        ),
        ack_rate=Gauge("foreshard_consumer_ack_rate", "Smoothed acks per second.", labels, registry=registry),
        target=Gauge(
            "foreshard_consumer_prefetch_target_messages",
            "Prefetch Agent's target.",
            labels,
            registry=registry,
        ),
        buffered_messages=Gauge(
            "foreshard_consumer_buffered_messages",
            "Messages held by the consumer.",
            labels,
            registry=registry,
        ),
        buffered_bytes=Gauge(
            "foreshard_consumer_buffered_bytes",
            "Payload bytes held by the consumer.",
            labels,
            registry=registry,
        ),
    )
    _BY_REGISTRY[id(registry)] = metrics
    return metrics


class AckCoordinator:
    """Collects acks and nacks per broker endpoint and sends them in batches."""

    def __init__(
        self,
        transport: Transport,
        group: str,
        consumer: str,
        agent: PrefetchAgent,
        metrics: ConsumerMetrics,
        max_batch: int = 1000,
        attempts: int = 5,
    ) -> None:
        self.transport = transport
        self.group = group
        self.consumer = consumer
        self.agent = agent
        self.metrics = metrics
        self.max_batch = max_batch
        self.attempts = attempts
        self.acked = 0
        self.failed_batches = 0
        self._acks: dict[str, list[str]] = {}
        self._nacks: dict[str, list[str]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._processing = metrics.processing.labels(group)
        self._ack_counter = metrics.acks.labels(group)

    def ack(self, endpoint: str, receipt: str, processing_s: float, now: float) -> None:
        self.acked += 1
        self.agent.record_acks(now, 1)
        self.agent.record_processing(now, processing_s)
        self._processing.observe(processing_s)
        self._ack_counter.inc()
        self._acks.setdefault(endpoint, []).append(receipt)
        self._kick(endpoint)

    def nack(self, endpoint: str, receipt: str) -> None:
        self._nacks.setdefault(endpoint, []).append(receipt)
        self._kick(endpoint)

    def publish_gauges(self, now: float, held_messages: int, held_bytes: int) -> None:
        labels = (self.group, self.consumer)
        self.metrics.ack_rate.labels(*labels).set(self.agent.acks.rate(now))
        self.metrics.target.labels(*labels).set(self.agent.target_messages(now))
        self.metrics.buffered_messages.labels(*labels).set(held_messages)
        self.metrics.buffered_bytes.labels(*labels).set(held_bytes)

    def _kick(self, endpoint: str) -> None:
        sender = self._senders.get(endpoint)
        if sender is None or sender.done():
            self._senders[endpoint] = asyncio.create_task(self._send(endpoint))

    async def _send(self, endpoint: str) -> None:
        """Drain the endpoint's queued acks and nacks, one call at a time."""
        while self._acks.get(endpoint) or self._nacks.get(endpoint):
            acks = _take(self._acks, endpoint, self.max_batch)
            nacks = _take(self._nacks, endpoint, self.max_batch)
            if acks:
                await self._call(self.transport.ack, endpoint, acks)
            if nacks:
                await self._call(self.transport.nack, endpoint, nacks)

    async def _call(self, method: _AckMethod, endpoint: str, receipts: list[str]) -> None:
        delay = 0.01
        for attempt in range(self.attempts):
            try:
                await method(endpoint, self.group, self.consumer, receipts)
                return
            except TransportError as error:
                # Acks are idempotent, so a retry is safe; giving up only means a later redelivery.
                if attempt == self.attempts - 1:
                    self.failed_batches += 1
                    log.warning("acks to %s dropped after %d attempts: %s", endpoint, self.attempts, error)
                    return
                await asyncio.sleep(delay)
                delay *= 2

    async def flush(self) -> None:
        """Wait until every queued ack and nack has been sent (or given up)."""
        while pending := [t for t in self._senders.values() if not t.done()]:
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending)


def _take(queues: dict[str, list[str]], endpoint: str, limit: int) -> list[str]:
    queue = queues.get(endpoint) or []
    taken, queues[endpoint] = queue[:limit], queue[limit:]
    return taken
