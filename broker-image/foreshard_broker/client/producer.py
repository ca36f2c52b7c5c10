"""Order-preserving producer: routes by slot or pin, batches, and follows MOVED and PAUSED.

Per-key order holds because a key has at most one batch in flight: its next messages wait until the
broker has answered for the earlier ones, and a refused batch (``MOVED``, ``PAUSED``) goes back to
the *front* of its keys' queues, so a retry can never overtake it.

Retries never duplicate and never drop (``foreshard_broker.idempotence``, after Kafka's KIP-98).
Batches travel on *lanes*; a lane has at most one batch in flight and, per broker, its own producer
id ``<id>.<lane>@<endpoint>`` with sequences 1, 2, 3... (sequences count per shard, as Kafka's do
per partition).  Every lane carries the producer's *epoch*, its start time in nanoseconds, so a
restarted producer with the same id starts afresh (a newer epoch) and an older incarnation still
running is fenced by the broker (``ProducerFencedError``), never answered "duplicate".

* after a lost reply the lane resends the same batch with the same sequence to the same broker
  (stored once, whatever happened to the first attempt); only a batch no broker took (none could
  be reached, or a draining one turned it away) may go elsewhere, when the routing table moved its
  keys;
* a batch of which something was stored consumes its sequence; refused messages travel again in a
  later batch under the next sequence; a batch of which nothing was stored does not;
* a sequence error (``OUT_OF_ORDER_SEQUENCE``, ``PRODUCER_FENCED``) fails the batch's futures with
  ``SequenceError``: never success.  After an out-of-order answer, or after giving up on a batch
  whose outcome is unknown, the lane takes a new epoch, so its next batches cannot be mistaken for
  an older one's resend.

Keyless messages are unordered and go to the shard with the smallest backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from foreshard_broker.client.transport import (
    OutboundMessage,
    PublishOutcome,
    PublishStatus,
    RoutingTable,
    Transport,
    TransportError,
    slot_of,
)
from foreshard_broker.idempotence import FENCED, OUT_OF_ORDER


class PublishError(Exception):
    """A message was refused for good (invalid) or not stored within the retry budget."""


class SequenceError(PublishError):
    """The broker refused the batch for its producer epoch or sequence: it was not stored."""


class ProducerFencedError(SequenceError):
    """A newer producer with the same id published to the broker: two producers share an id."""


@dataclass(frozen=True)
class ProducerOptions:
    linger_s: float = 0.002
    max_batch_messages: int = 1000
    max_batch_bytes: int = 1024 * 1024
    lanes: int = 8
    max_inflight_batches_per_shard: int = 4
    # Budget for one message across transport errors, PAUSED and MOVED; then its future fails.
    retry_budget_s: float = 30.0
    max_backoff_s: float = 0.5
    backlog_refresh_s: float = 1.0


@dataclass
class _Pending:
    message: OutboundMessage
    future: asyncio.Future[None]
    first_try: float
    refused_at: float | None = None


@dataclass
class _Lane:
    base: str  # <producer id>.<lane>; the broker sees <base>@<endpoint>
    epoch: int
    sequences: dict[str, int] = field(default_factory=dict)  # endpoint -> last consumed sequence
    busy: bool = False

    def producer_id(self, endpoint: str) -> str:
        return f"{self.base}@{endpoint}"

    def renew(self) -> None:
        """A new epoch: the broker forgets this lane's sequences, and anything of the old epoch
        still travelling is fenced instead of being taken for a resend."""
        self.epoch = max(time.time_ns(), self.epoch + 1)
        self.sequences.clear()


@dataclass
class ProducerStats:
    batches: int = 0
    stored: int = 0
    moved: int = 0
    paused: int = 0
    transport_errors: int = 0
    rerouted: int = 0  # messages of batches no broker saw, routed again after a routing change
    # Seconds from a key's first refused message (MOVED or PAUSED) to its storage: the pause the
    # key saw, one sample per key and episode.
    stalls: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))


_KEYLESS = "\0keyless"


class Producer:
    """Asyncio producer.  ``async with Producer(transport, [endpoint]) as p: await p.publish(k, b"..")``."""

    def __init__(
        self,
        transport: Transport,
        bootstrap: Sequence[str],
        producer_id: str | None = None,
        options: ProducerOptions | None = None,
    ) -> None:
        self.transport = transport
        self.bootstrap = list(bootstrap)
        self.options = options or ProducerOptions()
        base = producer_id or uuid.uuid4().hex
        epoch = time.time_ns()  # this incarnation's epoch: a restart with the same id has a newer one
        self._lanes = [_Lane(f"{base}.{i}", epoch) for i in range(self.options.lanes)]
        self.table: RoutingTable | None = None
        self.stats = ProducerStats()
        self._queues: dict[str, deque[_Pending]] = {}
        self._ready: OrderedDict[str, None] = OrderedDict()
        # Ordered keys with a batch in flight: never in `_ready`, so they cannot be sent twice.
        self._in_flight: set[str] = set()
        self._backoff_until: dict[str, float] = {}
        self._inflight: dict[str, int] = {}
        self._backlogs: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._unresolved: set[asyncio.Future[None]] = set()

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self.refresh_routing()
        self._loop_task = asyncio.create_task(self._dispatch_loop())

    async def close(self) -> None:
        """Publish everything queued, then stop."""
        await self.flush()
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task

    def send(
        self, key: str | None, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> asyncio.Future[None]:
        """Queue a message; the future resolves when the broker has stored it."""
        if self._closing:
            raise PublishError("producer is closed")
        if key == "":
            raise PublishError("an order key must not be empty; use None for an unordered message")
        loop = asyncio.get_running_loop()
        pending = _Pending(
            OutboundMessage(key, payload, dict(headers or {})), loop.create_future(), loop.time()
        )
        self._unresolved.add(pending.future)
        pending.future.add_done_callback(self._unresolved.discard)
        queue_key = _KEYLESS if key is None else key
        self._queues.setdefault(queue_key, deque()).append(pending)
        if queue_key not in self._in_flight:
            self._ready.setdefault(queue_key, None)
        self._wake.set()
        return pending.future

    async def publish(
        self, key: str | None, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        await self.send(key, payload, headers)

    async def flush(self) -> None:
        """Wait until every message sent so far is stored (or has failed)."""
        while self._unresolved:
            await asyncio.gather(*list(self._unresolved), return_exceptions=True)

    # --- routing -----------------------------------------------------------------------------
    async def refresh_routing(self, hint: str = "") -> RoutingTable:
        """Learn the newest routing table from the hinted shard, then from any known endpoint."""
        candidates = [hint] if hint else []
        if self.table is not None:
            candidates += sorted(self.table.endpoints.values())
        errors = []
        for endpoint in dict.fromkeys(candidates + self.bootstrap):
            try:
                table = await self.transport.routing(endpoint)
            except TransportError as error:
                errors.append(str(error))
                continue
            if self.table is None or table.epoch >= self.table.epoch:
                self.table = table
            return self.table
        raise PublishError(f"no broker answered for the routing table: {errors}")

    def endpoints(self) -> list[str]:
        """Every shard's endpoint; a standalone broker (a table without endpoints) is the bootstrap."""
        table = self.table
        return sorted(table.endpoints.values()) if table and table.endpoints else list(self.bootstrap)

    def _endpoint_for(self, key: str) -> str:
        table = self.table
        assert table is not None
        if key == _KEYLESS:
            return min(self.endpoints(), key=lambda e: self._backlogs.get(e, 0))
        return table.endpoint(table.owner(key, slot_of(key, table.num_slots))) or self.bootstrap[0]

    # --- dispatch ----------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        backlog_task = asyncio.create_task(self._backlog_loop())
        try:
            while not (self._closing and not self._unresolved):
                await self._wait_for_work()
                self._launch_batches()
        finally:
            backlog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await backlog_task

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._next_backoff_in())
        self._wake.clear()
        queued = sum(len(self._queues[k]) for k in self._ready)
        if 0 < queued < self.options.max_batch_messages and not self._closing:
            # Linger: let a batch fill a little before paying a round trip for it.
            await asyncio.sleep(self.options.linger_s)

    def _next_backoff_in(self) -> float | None:
        if not self._backoff_until:
            # While closing, re-check now and then: the last batch task may end after our wake-up.
            return 0.01 if self._closing else None
        now = asyncio.get_running_loop().time()
        # Only keys waiting to be sent matter; a stale entry would make this loop spin. A ready
        # key whose back-off ran out since the last launch counts too (wait 0): skipped by that
        # launch while still backed off, it would otherwise wait for a wake-up that may never come
        # (nothing else in flight), and its messages would stay queued for good.
        waits = [until for key, until in self._backoff_until.items() if key in self._ready]
        if not waits:
            self._backoff_until = {k: u for k, u in self._backoff_until.items() if u > now}
            return 0.01 if self._closing else None
        return max(0.0, min(waits) - now)

    def _launch_batches(self) -> None:
        for endpoint, batch in self._collect_batches().items():
            lane = next((lane for lane in self._lanes if not lane.busy), None)
            if lane is None:
                self._requeue(batch, retry=batch)
                continue
            lane.busy = True
            self._inflight[endpoint] = self._inflight.get(endpoint, 0) + 1
            task = asyncio.create_task(self._send(lane, endpoint, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _collect_batches(self) -> dict[str, list[_Pending]]:
        """One batch per shard with a free slot: ready keys' queued messages, each key in order."""
        now = asyncio.get_running_loop().time()
        free_lanes = sum(not lane.busy for lane in self._lanes)
        batches: dict[str, list[_Pending]] = {}
        for key in list(self._ready):
            if self._backoff_until.get(key, 0.0) > now:
                continue
            self._backoff_until.pop(key, None)
            endpoint = self._endpoint_for(key)
            batch = batches.get(endpoint)
            if batch is None:
                if (
                    len(batches) >= free_lanes
                    or self._inflight.get(endpoint, 0) >= self.options.max_inflight_batches_per_shard
                ):
                    continue
                batch = batches[endpoint] = []
            if self._take(key, batch):
                # An ordered key leaves the ready set until its batch is answered.
                del self._ready[key]
                self._in_flight.add(key)
        return {e: b for e, b in batches.items() if b}

    def _take(self, key: str, batch: list[_Pending]) -> bool:
        """Move the key's queued messages into the batch; True when the key is now in flight."""
        options = self.options
        queue = self._queues[key]
        size = sum(p.message.size for p in batch)
        if batch and len(batch) + len(queue) > options.max_batch_messages and key != _KEYLESS:
            return False  # never split a key across two concurrent batches
        if batch and size >= options.max_batch_bytes:
            # Full: the key waits for the next batch. (Marking it in flight with none of its
            # messages in this batch would leave it in flight for good: its answer never names it.)
            return False
        while queue and len(batch) < options.max_batch_messages and size < options.max_batch_bytes:
            pending = queue.popleft()
            batch.append(pending)
            size += pending.message.size
        if not queue:
            del self._queues[key]
        return key != _KEYLESS or key not in self._queues

    async def _send(self, lane: _Lane, endpoint: str, batch: list[_Pending]) -> None:
        released = False
        try:
            sequence = lane.sequences.get(endpoint, 0) + 1
            outcomes, answered = await self._publish_until_answered(lane, endpoint, sequence, batch)
            if any(outcome.status is PublishStatus.OK for outcome in outcomes):
                lane.sequences[endpoint] = sequence  # something was stored: the sequence is used
            elif not answered or any(o.sequence_error == OUT_OF_ORDER for o in outcomes):
                lane.renew()  # unknown outcome, or the broker lost track: start a new epoch
            self._release(lane, endpoint)
            released = True
            self.stats.batches += 1
            await self._settle(batch, outcomes)
        except Exception as error:
            # An unexpected error fails the batch: never its futures pending and its keys and
            # lane taken for good (the producer would silently stop sending those keys).
            if not released:
                lane.renew()  # the outcome is unknown
                self._release(lane, endpoint)
            for pending in batch:
                _resolve(pending.future, PublishError(f"publish to {endpoint} failed: {error!r}"))
            self._requeue(batch, retry=[])
        self._wake.set()

    def _release(self, lane: _Lane, endpoint: str) -> None:
        self._inflight[endpoint] -= 1
        lane.busy = False

    async def _publish_until_answered(
        self, lane: _Lane, endpoint: str, sequence: int, batch: list[_Pending]
    ) -> tuple[list[PublishOutcome], bool]:
        """Same lane, same sequence, same broker until it answers: a lost reply is never a loss.
        Returns the outcomes and whether the broker answered (False: the budget ran out)."""
        messages = [p.message for p in batch]
        loop = asyncio.get_running_loop()
        delay = 0.005
        producer_id = lane.producer_id(endpoint)
        no_effect = True  # no attempt has had any effect on a broker yet
        first: TransportError | None = None  # what made the outcome unknown, if it is
        while True:
            try:
                outcomes = await self.transport.publish(endpoint, producer_id, sequence, messages, lane.epoch)
                return outcomes, True
            except TransportError as error:
                self.stats.transport_errors += 1
                no_effect = no_effect and error.no_effect
                first = first or (None if error.no_effect else error)
                if no_effect and await self._routed_elsewhere(endpoint, batch):
                    # No broker took it (none could be reached, or a draining one turned it away),
                    # and its keys live elsewhere now (e.g. a shard scaled in after its slots moved
                    # away, before this producer heard of the moves): route it again instead of
                    # waiting for a broker that is gone. Its sequence is not used.
                    self.stats.rerouted += len(batch)
                    assert self.table is not None  # _routed_elsewhere learnt one
                    moved = PublishOutcome(PublishStatus.MOVED, epoch=self.table.epoch, reason=str(error))
                    return [moved] * len(batch), True
                if loop.time() - batch[0].first_try > self.options.retry_budget_s:
                    reason = f"broker unreachable, the batch may or may not be stored: {error}"
                    if first is not None and first is not error:
                        reason += f" (its outcome unknown since: {first})"
                    return [PublishOutcome(PublishStatus.REJECTED, reason=reason)] * len(batch), False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.max_backoff_s)

    async def _routed_elsewhere(self, endpoint: str, batch: list[_Pending]) -> bool:
        """Whether the newest routing table sends any of the batch's keys to another broker."""
        with contextlib.suppress(PublishError):
            await self.refresh_routing()
        if self.table is None:
            return False
        return any(self._endpoint_for(p.message.key or _KEYLESS) != endpoint for p in batch)

    async def _settle(self, batch: list[_Pending], outcomes: Sequence[PublishOutcome]) -> None:
        """Resolve the stored messages; put the refused ones back in front of their keys' queues.

        The broker refuses by slot, so a key's messages in one batch share one fate and the
        refused ones are always a key's *oldest* unsent messages.
        """
        now = asyncio.get_running_loop().time()
        self._stored([p for p, o in zip(batch, outcomes, strict=True) if o.status is PublishStatus.OK], now)
        retry: list[_Pending] = []
        moves: list[tuple[_Pending, PublishOutcome]] = []
        for pending, outcome in zip(batch, outcomes, strict=True):
            if outcome.status is PublishStatus.OK:
                continue
            if (
                outcome.status is PublishStatus.REJECTED
                or now - pending.first_try > self.options.retry_budget_s
            ):
                _resolve(pending.future, _error_of(outcome))
                continue
            pending.refused_at = pending.refused_at or now
            retry.append(pending)
            if outcome.status is PublishStatus.MOVED:
                moves.append((pending, outcome))
            else:
                self._back_off(pending, outcome, now)
        if moves:
            await self._follow_move(moves, now)
        self._requeue(batch, retry=retry)

    def _stored(self, batch: list[_Pending], now: float) -> None:
        self.stats.stored += len(batch)
        stalled: dict[str | None, float] = {}
        for pending in batch:
            if pending.refused_at is not None:
                stalled.setdefault(pending.message.key, now - pending.refused_at)
            _resolve(pending.future, None)
        # One sample per key and refusal episode (its oldest message), not one per queued message.
        self.stats.stalls.extend(stalled.values())

    def _back_off(self, pending: _Pending, outcome: PublishOutcome, now: float) -> None:
        self.stats.paused += 1
        delay = min(max(outcome.retry_after_s, 0.001), self.options.max_backoff_s)
        key = pending.message.key or _KEYLESS
        self._backoff_until[key] = max(self._backoff_until.get(key, 0.0), now + delay)

    async def _follow_move(self, moves: list[tuple[_Pending, PublishOutcome]], now: float) -> None:
        self.stats.moved += len(moves)
        newest = max(moves, key=lambda move: move[1].epoch)[1]
        known = self.table.epoch if self.table is not None else 0
        if newest.epoch > known:
            with contextlib.suppress(PublishError):
                await self.refresh_routing(newest.owner_endpoint)
        learnt = self.table.epoch if self.table is not None else 0
        for pending, outcome in moves:
            if not outcome.epoch > known or learnt < outcome.epoch:
                # Brokers disagree while a switch propagates: resend in a moment instead of spinning.
                self._backoff_until[pending.message.key or _KEYLESS] = now + 0.002

    def _requeue(self, batch: list[_Pending], retry: list[_Pending]) -> None:
        by_key: dict[str, list[_Pending]] = {}
        for pending in retry:
            by_key.setdefault(pending.message.key or _KEYLESS, []).append(pending)
        for key, refused in by_key.items():
            self._queues.setdefault(key, deque()).extendleft(reversed(refused))
        for key in {p.message.key or _KEYLESS for p in batch}:
            self._in_flight.discard(key)
            if self._queues.get(key):
                self._ready.setdefault(key, None)

    async def _backlog_loop(self) -> None:
        while True:
            for endpoint in self.endpoints():
                with contextlib.suppress(TransportError):
                    self._backlogs[endpoint] = await self.transport.backlog(endpoint)
            await asyncio.sleep(self.options.backlog_refresh_s)


def _error_of(outcome: PublishOutcome) -> PublishError:
    reason = outcome.reason or f"not stored within the retry budget ({outcome.status.value})"
    if outcome.sequence_error == FENCED:
        return ProducerFencedError(reason)
    if outcome.sequence_error:
        return SequenceError(reason)
    return PublishError(reason)


def _resolve(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
