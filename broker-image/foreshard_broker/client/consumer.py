"""Consumer: group membership, one fetch loop per broker, a keyed buffer and concurrent handlers.

    brokers --fetch (sized by the Prefetch Agent)--> KeyedBuffer --receive()--> application
       ^                                                                           |
       +------------- AckCoordinator (batched acks, rate + processing time) <--ack--+

Messages reach the application with concurrency across keys and never within a key: a key is
*checked out* from the buffer until its message is acked or nacked.  The buffer's bound counts every
message the consumer holds (buffered and being processed) plus what fetches in flight may still
bring, so ``PrefetchPolicy.max_bytes`` is a hard ceiling, not an average.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from foreshard_broker.client.acks import AckCoordinator, consumer_metrics
from foreshard_broker.client.buffer import KeyedBuffer
from foreshard_broker.client.prefetch import FetchSize, FixedPrefetch, PrefetchAgent, PrefetchPolicy
from foreshard_broker.client.transport import Delivery, FetchRequest, RoutingTable, Transport, TransportError

log = logging.getLogger(__name__)


class ConsumerClosed(Exception):
    """The consumer was closed; no more messages."""


@dataclass(frozen=True)
class ConsumerOptions:
    concurrency: int = 8
    prefetch: PrefetchPolicy = field(default_factory=PrefetchPolicy)
    # A static prefetch count instead of the adaptive agent (for comparisons).
    fixed_prefetch: int | None = None
    fetch_wait_s: float = 0.5
    routing_refresh_s: float = 1.0


@dataclass
class Message:
    """A message handed to the application; call :meth:`ack` or :meth:`nack` exactly once."""

    delivery: Delivery
    endpoint: str
    received_at: float
    handed_at: float = 0.0
    _consumer: Consumer | None = field(default=None, repr=False)

    @property
    def key(self) -> str | None:
        return self.delivery.key

    @property
    def payload(self) -> bytes:
        return self.delivery.payload

    @property
    def headers(self) -> Mapping[str, str]:
        return self.delivery.headers

    def ack(self) -> None:
        if self._consumer is not None:
            self._consumer.settle(self, ok=True)

    def nack(self) -> None:
        if self._consumer is not None:
            self._consumer.settle(self, ok=False)


Handler = Callable[[Message], Awaitable[None]]
_NOTHING = FetchSize(0, 0)
# Fetches in flight per shard: enough to keep the pipe full at long round trips.
_MAX_OUTSTANDING = 4


class Consumer:
    """Asyncio consumer of one group.

    ``async with Consumer(transport, endpoints, "billing") as c: await c.run(handler)`` or, message by
    message, ``m = await c.receive(); ...; m.ack()``.
    """

    def __init__(
        self,
        transport: Transport,
        bootstrap: Sequence[str],
        group: str,
        consumer_id: str | None = None,
        options: ConsumerOptions | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.transport = transport
        self.bootstrap = list(bootstrap)
        self.group = group
        self.consumer_id = consumer_id or uuid.uuid4().hex
        self.options = options or ConsumerOptions()
        self.agent = _make_agent(self.options)
        self.acks = AckCoordinator(transport, group, self.consumer_id, self.agent, consumer_metrics(registry))
        self.buffer = KeyedBuffer()
        self.table: RoutingTable | None = None
        self._reserved = [0, 0]  # messages, bytes that fetches in flight may still bring
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._outstanding: dict[str, int] = {}
        self._fetches: set[asyncio.Task[None]] = set()
        self._needs: dict[str, int] = {}
        self._dry: set[str] = set()
        self._saturated: set[str] = set()
        self._retired: set[str] = set()
        self._changed = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self._refresh_routing()
        self._supervisor = asyncio.create_task(self._supervise())

    async def close(self) -> None:
        """Stop fetching, hand unprocessed messages back, and send the last acks."""
        self._closing = True
        self._notify()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        loops = list(self._loops.values())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*loops, return_exceptions=True), self.options.fetch_wait_s + 1
            )
        for message in self.buffer.drain():
            self.acks.nack(message.endpoint, message.delivery.receipt)
        # Messages being processed are acked (or nacked) by their handlers: give them a moment.
        deadline = self._now() + self.options.fetch_wait_s + 5
        while self.buffer.held_messages > 0 and self._now() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - self._now())
        await self.acks.flush()

    def set_forecast(self, rate_per_s: float | None) -> None:
        """The operator's forecast of this consumer's consumption rate, in messages per second."""
        self.agent.set_forecast(rate_per_s)

    # --- application side --------------------------------------------------------------------
    async def receive(self) -> Message:
        """The next message whose key is not being processed; raises ConsumerClosed when closed."""
        while True:
            message = self.buffer.take()
            if message is not None:
                message.handed_at = self._now()
                message._consumer = self
                return message
            if self._closing:
                raise ConsumerClosed("consumer closed")
            changed = self._changed
            await changed.wait()

    def settle(self, message: Message, ok: bool) -> None:
        if message._consumer is not self:
            return  # settled twice, or never handed out: ignore rather than corrupt the counts
        message._consumer = None
        self.buffer.release(message)
        self._saturated.discard(message.endpoint)  # an ack lets the broker deliver that key's next
        now = self._now()
        if ok:
            self.acks.ack(message.endpoint, message.delivery.receipt, now - message.handed_at, now)
        else:
            self.acks.nack(message.endpoint, message.delivery.receipt)
        self.acks.publish_gauges(now, self.buffer.held_messages, self.buffer.held_bytes)
        self._notify()

    async def run(self, handler: Handler) -> None:
        """Run ``concurrency`` workers until the consumer is closed; a raising handler nacks."""
        workers = [asyncio.create_task(self._work(handler)) for _ in range(self.options.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    async def _work(self, handler: Handler) -> None:
        while True:
            try:
                message = await self.receive()
            except ConsumerClosed:
                return
            try:
                await handler(message)
            except Exception:
                log.exception("handler failed; message nacked for redelivery")
                message.nack()
            else:
                message.ack()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- brokers side ------------------------------------------------------------------------
    async def _refresh_routing(self) -> None:
        endpoints = sorted(self.table.endpoints.values()) if self.table else []
        for endpoint in dict.fromkeys(endpoints + self.bootstrap):
            try:
                table = await self.transport.routing(endpoint)
            except TransportError:
                continue
            if self.table is None or table.epoch >= self.table.epoch:
                self.table = table
            break
        known = sorted(self.table.endpoints.values()) if self.table else []
        # A shard gone from the table (scaled in, after the operator moved its slots away) is no
        # longer fetched from; its loop ends after the fetch it may have in flight.
        for endpoint in [e for e in self._loops if known and e not in known]:
            del self._loops[endpoint]
            self._retired.add(endpoint)
            self._notify()
        # A standalone broker (no routing pushed yet) has a table without endpoints: the bootstrap.
        for endpoint in known or self.bootstrap:
            if endpoint not in self._loops:
                self._retired.discard(endpoint)
                self._loops[endpoint] = asyncio.create_task(self._fetch_loop(endpoint))

    async def _supervise(self) -> None:
        """Follow the routing table, so a new shard is fetched from as soon as it appears."""
        while True:
            await asyncio.sleep(self.options.routing_refresh_s)
            await self._refresh_routing()

    def _fetch_size(self, endpoint: str) -> FetchSize:
        """The next fetch this shard's loop may send now, or zero messages.

        Fetches are pipelined like a TCP window: held + reserved (asked, not yet answered) never
        exceeds the agent's target, and a new fetch goes out as soon as a useful chunk of room
        frees up, without waiting for the previous answer.  The room is shared between shards
        that have messages; a shard that came back empty gets one small probe.  A loop that had
        to hand back a message too large for its share (``_needs``) gets the whole room once it is
        large enough, and the other loops start nothing until then, so the large message cannot
        starve.
        """
        held_messages = self.buffer.held_messages + self._reserved[0]
        held_bytes = self.buffer.held_bytes + self._reserved[1]
        now = self._now()
        room = self.agent.next_fetch(now, held_messages, held_bytes)
        need = self._needs.get(endpoint)
        if need is not None:
            return room if room.max_bytes >= need and not self._outstanding.get(endpoint) else _NOTHING
        outstanding = self._outstanding.get(endpoint, 0)
        if room.max_messages <= 0 or self._needs or outstanding >= _MAX_OUTSTANDING:
            return _NOTHING
        sharing = max(1, len([e for e in self._loops if e not in self._dry]))
        share = math.ceil(room.max_messages / sharing)
        if endpoint in self._dry:
            share = min(share, self.options.concurrency)
        if outstanding and (endpoint in self._dry or endpoint in self._saturated):
            return _NOTHING  # nothing more to get there until an answer or an ack changes that
        if outstanding and share < math.ceil(self.agent.target_messages(now) / 8):
            return _NOTHING  # wait for a worthwhile chunk rather than send many tiny fetches
        # Reserve bytes for what the asked messages may weigh (twice the mean), not the whole
        # room, so the pipelined fetches behind this one still have bytes to ask for.
        expected = max(2 * share * math.ceil(self.agent.message_bytes()), 64 * 1024)
        return FetchSize(share, min(room.max_bytes // sharing, expected))

    async def _join(self, endpoint: str) -> bool:
        """Join the group on this shard, retrying while it is away (a restarting pod): a loop that
        fetched without joining would be refused for an unknown group forever. False if closed."""
        delay = 0.05
        while not self._closing and endpoint not in self._retired:
            try:
                await self.transport.create_group(endpoint, self.group)
                return True
            except TransportError as error:
                log.debug("joining %s on %s failed: %s", self.group, endpoint, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        return False

    async def _fetch_loop(self, endpoint: str) -> None:
        if not await self._join(endpoint):
            return
        while not self._closing and endpoint not in self._retired:
            size = self._fetch_size(endpoint)
            if size.max_messages <= 0 or size.max_bytes <= 0:
                await self._changed.wait()
                continue
            # Only the first fetch to a shard long-polls; the pipelined ones must not sit on their
            # reservation while the shard has nothing more to give.
            wait_s = 0.0 if self._outstanding.get(endpoint) else self.options.fetch_wait_s
            # Reserve before the task runs, so the next size computed here already counts it.
            self._reserved[0] += size.max_messages
            self._reserved[1] += size.max_bytes
            self._outstanding[endpoint] = self._outstanding.get(endpoint, 0) + 1
            task = asyncio.create_task(self._fetch_once(endpoint, size, wait_s))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)
        if self._fetches:
            await asyncio.gather(*list(self._fetches), return_exceptions=True)

    async def _fetch_once(self, endpoint: str, size: FetchSize, wait_s: float) -> None:
        request = FetchRequest(self.group, self.consumer_id, size.max_messages, size.max_bytes, wait_s)
        started = self._now()
        try:
            deliveries = await self.transport.fetch(endpoint, request)
        except TransportError as error:
            log.debug("fetch from %s failed: %s", endpoint, error)
            deliveries = []
            await asyncio.sleep(0.05)
        finally:
            self._reserved[0] -= size.max_messages
            self._reserved[1] -= size.max_bytes
            self._outstanding[endpoint] -= 1
        now = self._now()
        self._needs.pop(endpoint, None)
        if deliveries:
            self._dry.discard(endpoint)
            self._saturated.discard(endpoint)
        elif wait_s > 0:
            self._dry.add(endpoint)  # a long-poll found nothing: the shard ran dry
        else:
            self._saturated.add(endpoint)  # every deliverable message is already out
        if deliveries or wait_s > 0:
            got_bytes = sum(d.size for d in deliveries)
            self.agent.record_fetch(now, now - started, size.max_messages, len(deliveries), got_bytes)
        for delivery in deliveries:
            self._admit(endpoint, delivery, now)
        # Always: new messages, a released reservation, or a changed shard state may be what a
        # fetch loop or a worker waits for (a missed wake-up here once stalled a consumer).
        self._notify()

    def _admit(self, endpoint: str, delivery: Delivery, now: float) -> None:
        bound = self.options.prefetch.max_bytes
        if self.buffer.held_bytes + self._reserved[1] + delivery.size <= bound:
            self.buffer.put(Message(delivery, endpoint, now))
            return
        # A broker sends one message even when it is larger than the asked bytes; the bound is
        # hard, so the message goes back and this loop waits for room for it.
        self.acks.nack(endpoint, delivery.receipt)
        if delivery.size > bound:
            log.error(
                "a %d-byte message exceeds the %d-byte prefetch bound; raise max_bytes", delivery.size, bound
            )
        else:
            self._needs[endpoint] = max(self._needs.get(endpoint, 0), delivery.size)


def _make_agent(options: ConsumerOptions) -> PrefetchAgent:
    if options.fixed_prefetch is not None:
        return FixedPrefetch(options.prefetch, options.fixed_prefetch, options.concurrency)
    return PrefetchAgent(options.prefetch, options.concurrency)
