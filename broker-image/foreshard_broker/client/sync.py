"""Synchronous wrapper for code that does not run an event loop (scripts, WSGI apps, threads).

Each wrapper owns an asyncio event loop running in a daemon thread and forwards calls to the
asyncio producer or consumer there.  The transport is created *inside* that loop (gRPC channels
belong to the loop that opened them), hence ``transport_factory`` instead of a transport.

    with SyncProducer(GrpcTransport, ["broker-0:7000"]) as producer:
        producer.publish("order-17", b"created")

    with SyncConsumer(GrpcTransport, ["broker-0:7000"], "billing") as consumer:
        message = consumer.receive(timeout=5.0)
        handle(message.payload)
        message.ack()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.producer import Producer, ProducerOptions
from foreshard_broker.client.transport import Transport

T = TypeVar("T")
TransportFactory = Callable[[], Transport]


class _LoopThread:
    """An event loop in a daemon thread, and a way to run coroutines on it from other threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="foreshard-sdk", daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coroutine).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class SyncProducer:
    """Blocking :class:`Producer`."""

    def __init__(
        self,
        transport_factory: TransportFactory,
        bootstrap: Sequence[str],
        producer_id: str | None = None,
        options: ProducerOptions | None = None,
    ) -> None:
        self._thread = _LoopThread()
        self._transport: Transport | None = None

        async def open_producer() -> Producer:
            self._transport = transport_factory()
            producer = Producer(self._transport, bootstrap, producer_id, options)
            await producer.start()
            return producer

        self._producer = self._thread.run(open_producer())

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self, key: str | None, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> concurrent.futures.Future[None]:
        """Queue a message without waiting; the future completes when the broker stored it."""
        return self._thread.submit(self._producer.publish(key, payload, headers))

    def publish(
        self,
        key: str | None,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait until the broker stored the message."""
        self.send(key, payload, headers).result(timeout)

    def flush(self, timeout: float | None = None) -> None:
        self._thread.run(self._producer.flush(), timeout)

    def close(self) -> None:
        async def shut() -> None:
            await self._producer.close()
            if self._transport is not None:
                await self._transport.close()

        self._thread.run(shut())
        self._thread.stop()


class SyncMessage:
    """A received message; ``ack`` and ``nack`` may be called from any thread."""

    def __init__(self, message: Message, loop: asyncio.AbstractEventLoop) -> None:
        self._message, self._loop = message, loop

    @property
    def key(self) -> str | None:
        return self._message.key

    @property
    def payload(self) -> bytes:
        return self._message.payload

    @property
    def headers(self) -> Mapping[str, str]:
        return self._message.headers

    def ack(self) -> None:
        self._loop.call_soon_threadsafe(self._message.ack)

    def nack(self) -> None:
        self._loop.call_soon_threadsafe(self._message.nack)


class SyncConsumer:
    """Blocking :class:`Consumer`: ``receive`` one message at a time, from one or many threads."""

    def __init__(
        self,
        transport_factory: TransportFactory,
        bootstrap: Sequence[str],
        group: str,
        consumer_id: str | None = None,
        options: ConsumerOptions | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._thread = _LoopThread()
        self._transport: Transport | None = None

        async def open_consumer() -> Consumer:
            self._transport = transport_factory()
            consumer = Consumer(self._transport, bootstrap, group, consumer_id, options, registry)
            await consumer.start()
            return consumer

        self._consumer = self._thread.run(open_consumer())

    def __enter__(self) -> SyncConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def receive(self, timeout: float | None = None) -> SyncMessage:
        """The next message whose key is not being processed; raises TimeoutError after ``timeout``."""
        future = self._thread.submit(asyncio.wait_for(self._consumer.receive(), timeout))
        return SyncMessage(future.result(), self._thread.loop)

    def set_forecast(self, rate_per_s: float | None) -> None:
        self._thread.loop.call_soon_threadsafe(self._consumer.set_forecast, rate_per_s)

    def close(self) -> None:
        async def shut() -> None:
            await self._consumer.close()
            if self._transport is not None:
                await self._transport.close()

        self._thread.run(shut())
        self._thread.stop()
