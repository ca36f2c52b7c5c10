"""Real keyed traffic through a queue's brokers, checked end to end (the demo's and the tests' proof).

    Producer (bootstraps from one broker, routes by the operator's table)
        -> brokers (each stores the keys it owns) -> per-shard counts from GetBacklog
        -> Consumer group (every shard) -> per key: lost, duplicated, out of order

Payloads are `<run>|<key>:<sequence>`, so the check needs nothing but what the consumer received;
a new group also reads what earlier runs left on the brokers, which the run id sets apart.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from foreshard_broker.client.broker_client import BrokerClient
from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer
from foreshard_broker.routing import slot_of


@dataclass
class Verdict:
    messages: int
    keys: int
    lost: int
    duplicated: int
    reordered: int  # keys whose messages arrived out of publish order
    stored_by_shard: dict[int, int] = field(default_factory=dict)
    publish_s: float = 0.0
    consume_s: float = 0.0
    failed: int = 0  # publishes never acknowledged (allowed: never promised), not lost
    earlier_runs: int = 0  # messages of earlier traffic the group also read (not judged)

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicated == self.reordered == 0

    @property
    def busiest_shard_share(self) -> float:
        total = sum(self.stored_by_shard.values())
        return max(self.stored_by_shard.values()) / total if total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "ok": self.ok,
            "busiest_shard_share": round(self.busiest_shard_share, 3),
            "publish_msgs_s": round(self.messages / self.publish_s) if self.publish_s else 0,
        }


class Checker:
    """What a consumer saw, judged against what the brokers acknowledged (pure bookkeeping).

    `acked` maps each key to the sequences a broker answered "stored" for; a message whose publish
    failed (say its broker was down past the retry budget) was never promised, so it is not lost.
    """

    def __init__(self, acked: Mapping[str, Sequence[int]], run: str = "") -> None:
        self.acked = {key: set(sequences) for key, sequences in acked.items()}
        self.run = run
        self.seen: dict[str, list[int]] = {}
        self.foreign = 0  # messages of other runs (earlier traffic still retained)

    def record(self, payload: bytes) -> None:
        run, _, body = payload.decode().rpartition("|")
        if run != self.run:
            self.foreign += 1
            return
        key, _, sequence = body.rpartition(":")
        self.seen.setdefault(key, []).append(int(sequence))

    @property
    def received(self) -> int:
        return sum(len(s) for s in self.seen.values())

    def complete(self) -> bool:
        return all(sequences <= set(self.seen.get(k, ())) for k, sequences in self.acked.items())

    def verdict(self) -> tuple[int, int, int]:
        """(lost, duplicated, reordered). A message delivered again right after itself is a
        redelivery (see `redelivered`), not a duplicate: a broker killed before it persisted the
        consumer's ack hands the key's head out again, as at-least-once delivery must."""
        lost = duplicated = reordered = 0
        for key, sequences in self.acked.items():
            got = _collapsed(self.seen.get(key, []))
            lost += len(sequences - set(got))
            duplicated += len(got) - len(set(got))
            reordered += any(b <= a for a, b in itertools.pairwise(got))
        return lost, duplicated, reordered

    def redelivered(self) -> int:
        """Messages delivered again immediately after themselves (an acknowledgement lost with a
        killed broker, or one that missed the ack deadline): the key's order is intact."""
        return sum(len(got) - len(_collapsed(got)) for got in self.seen.values())


def _collapsed(got: list[int]) -> list[int]:
    return [n for i, n in enumerate(got) if i == 0 or n != got[i - 1]]


def keys(count: int) -> list[str]:
    return [f"customer-{i:05d}" for i in range(count)]


@dataclass
class Published:
    acked: dict[str, list[int]]  # key -> sequences the brokers answered "stored" for
    failed: int  # publishes that ended in an error (never acknowledged)
    run: str = ""  # the payloads' run id

    @property
    def stored(self) -> int:
        return sum(map(len, self.acked.values()))


async def publish(bootstrap: Sequence[str], messages: int, key_count: int, window: int = 5000) -> Published:
    """Round-robin over `key_count` keys, `window` messages in flight; what was acknowledged."""
    names = keys(key_count)
    acked: dict[str, list[int]] = {name: [] for name in names}
    failed = 0
    run = uuid.uuid4().hex[:12]
    transport = GrpcTransport()
    try:
        async with Producer(transport, list(bootstrap)) as producer:
            for start in range(0, messages, window):
                batch = [
                    (names[i % key_count], i // key_count)
                    for i in range(start, min(messages, start + window))
                ]
                answers = await asyncio.gather(
                    *(producer.send(key, f"{run}|{key}:{seq}".encode()) for key, seq in batch),
                    return_exceptions=True,
                )
                for (key, seq), answer in zip(batch, answers, strict=True):
                    if isinstance(answer, BaseException):
                        failed += 1
                    else:
                        acked[key].append(seq)
    finally:
        await transport.close()
    return Published(acked, failed, run)


async def stored_by_shard(endpoints: Mapping[int, str]) -> dict[int, int]:
    counts = {}
    for shard, endpoint in sorted(endpoints.items()):
        client = BrokerClient(endpoint)
        try:
            counts[shard] = int((await client.backlog()).retained_messages)
        finally:
            await client.close()
    return counts


async def consume(bootstrap: Sequence[str], checker: Checker, group: str, timeout_s: float) -> None:
    transport = GrpcTransport()
    consumer = Consumer(
        transport, list(bootstrap), group, f"{group}-0", ConsumerOptions(concurrency=64), CollectorRegistry()
    )

    async def handle(message: Message) -> None:
        checker.record(message.payload)

    await consumer.start()
    running = asyncio.create_task(consumer.run(handle))
    deadline = time.monotonic() + timeout_s
    try:
        while not checker.complete() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a late duplicate would show here
    finally:
        await consumer.close()
        await running
        await transport.close()


async def check(
    endpoints: Mapping[int, str],
    messages: int,
    key_count: int,
    group: str = "traffic-check",
    timeout_s: float = 120,
) -> Verdict:
    """Publish through one broker, count what each shard stored, consume it all and judge."""
    bootstrap = [next(iter(sorted(endpoints.items())))[1]]
    began = time.perf_counter()
    published = await publish(bootstrap, messages, key_count)
    publish_s = time.perf_counter() - began
    stored = await stored_by_shard(endpoints)
    return await judge(bootstrap, published, group, timeout_s, stored, publish_s)


async def judge(
    bootstrap: Sequence[str],
    published: Published,
    group: str,
    timeout_s: float,
    stored: dict[int, int] | None = None,
    publish_s: float = 0.0,
) -> Verdict:
    """Consume everything as `group` and judge it against what was acknowledged."""
    checker = Checker(published.acked, published.run)
    began = time.perf_counter()
    await consume(bootstrap, checker, group, timeout_s)
    lost, duplicated, reordered = checker.verdict()
    return Verdict(
        published.stored + published.failed,
        len(published.acked),
        lost,
        duplicated,
        reordered,
        stored or {},
        publish_s,
        time.perf_counter() - began,
        published.failed,
        checker.foreign,
    )


STUCK_S = 30.0  # a publish batch unresolved this long is reported as stuck
OFFER_TICK_S = 0.1  # an offered rate's sends go out in ticks this long
MAX_IN_FLIGHT = 20_000  # unanswered sends at an offered rate; beyond it the producer waits


class Continuous:
    """Keyed traffic published and consumed at once, in its own thread, until stopped; then judged.

    The scale-cycle proof: a consumer group reads while slots move (its group state moves with
    them), and every acknowledged publish is checked once and in order. `with Continuous(...)`
    starts it; leaving the block stops publishing and waits until everything acked was consumed.

    Without a `rate` each batch waits for the previous one's answers (as fast as the brokers
    answer, with `pause_s` between batches). With one, the load is *offered*: sends are issued at
    `rate` messages/s whatever the answers (at most MAX_IN_FLIGHT unanswered), so one slow or
    restarting broker delays its own keys only, as real producers would. `rate` may be set from
    another thread at any time (a bench changing the offered load).
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        key_count: int = 200,
        batch: int = 100,
        pause_s: float = 0.05,
        rate: float | None = None,
    ) -> None:
        self.bootstrap, self.group = bootstrap, group
        self.key_count, self.batch, self.pause_s = key_count, batch, pause_s
        self.rate = rate  # messages/s offered; None: closed loop, batch after batch
        self.sent = 0  # sends issued
        self.stop = threading.Event()
        self.drain_s = 180.0
        # Payloads carry a run id: a new group also reads what earlier traffic left retained (say
        # an idle group of an earlier run still holds it), which the checker sets apart.
        self.run = uuid.uuid4().hex[:12]
        self.checker = Checker({k: [] for k in keys(key_count)}, self.run)
        self.failed = 0
        self.drained_s = 0.0
        self.pending = 0
        self.stuck: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Continuous:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=self.drain_s + 60)

    def _run(self) -> None:
        try:
            asyncio.run(self._traffic())
        except BaseException as error:  # reported by verdict()'s caller
            self.error = error

    async def _traffic(self) -> None:
        transport = GrpcTransport()
        options = ConsumerOptions(concurrency=64, routing_refresh_s=0.5)
        consumer = Consumer(
            transport, [self.bootstrap], self.group, f"{self.group}-0", options, CollectorRegistry()
        )

        async def handle(message: Message) -> None:
            self.checker.record(message.payload)

        await consumer.start()
        running = asyncio.create_task(consumer.run(handle))
        names = keys(self.key_count)
        try:
            async with Producer(transport, [self.bootstrap]) as producer:
                if self.rate is not None:
                    await self._offered(producer, names)
                sequence = 0
                while not self.stop.is_set():
                    sent = [
                        (names[i % self.key_count], i // self.key_count)
                        for i in range(sequence, sequence + self.batch)
                    ]
                    sequence += len(sent)
                    self.pending = len(sent)
                    futures = [producer.send(key, f"{self.run}|{key}:{seq}".encode()) for key, seq in sent]
                    answers = await self._answers(producer, sent, futures)
                    self.pending = 0
                    for (key, seq), answer in zip(sent, answers, strict=True):
                        if isinstance(answer, BaseException):
                            self.failed += 1
                        else:
                            self.checker.acked[key].add(seq)
                    await asyncio.sleep(self.pause_s)  # load, not a saturation test
            began = time.monotonic()
            deadline = began + self.drain_s
            while not self.checker.complete() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            self.drained_s = time.monotonic() - began
            await asyncio.sleep(1.0)  # a late duplicate would show here
        finally:
            await consumer.close()
            await running
            await transport.close()

    async def _offered(self, producer: Producer, names: list[str]) -> None:
        """Sends at `self.rate` (read every tick) until stopped, then waits for their answers."""
        futures: set[asyncio.Future[None]] = set()
        sequence, owed, last = 0, 0.0, time.monotonic()
        while not self.stop.is_set():
            await asyncio.sleep(OFFER_TICK_S)
            now = time.monotonic()
            # no catching up after a stall longer than a tick or two: offered load, not a backlog
            owed = min(owed + (now - last) * (self.rate or 0.0), 2 * OFFER_TICK_S * (self.rate or 0.0) + 1)
            last = now
            count, owed = int(owed), owed - int(owed)
            for i in range(sequence, sequence + count):
                key, seq = names[i % self.key_count], i // self.key_count
                futures.add(self._send(producer, key, seq))
            sequence += count
            self.sent = sequence
            while len(futures) > MAX_IN_FLIGHT:
                _, futures = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
            futures = {f for f in futures if not f.done()}
            self.pending = len(futures)
        if futures:
            await asyncio.wait(futures, timeout=STUCK_S * 2)
        self.pending = sum(not f.done() for f in futures)

    def _send(self, producer: Producer, key: str, seq: int) -> asyncio.Future[None]:
        future = asyncio.ensure_future(producer.send(key, f"{self.run}|{key}:{seq}".encode()))

        def settled(done: asyncio.Future[None]) -> None:
            if done.cancelled() or done.exception() is not None:
                self.failed += 1
            else:
                self.checker.acked[key].add(seq)

        future.add_done_callback(settled)
        return future

    async def _answers(
        self, producer: Producer, sent: list[tuple[str, int]], futures: list[asyncio.Future[None]]
    ) -> list[BaseException | None]:
        """The batch's answers; a batch unresolved for STUCK_S leaves what the producer holds for
        its keys in `self.stuck` (evidence for a publish that never resolves), then keeps waiting."""
        gathered = asyncio.gather(*futures, return_exceptions=True)
        try:
            return list(await asyncio.wait_for(asyncio.shield(gathered), STUCK_S))
        except TimeoutError:
            table = producer.table
            open_keys = sorted({key for (key, _), f in zip(sent, futures, strict=True) if not f.done()})
            self.stuck = {
                "keys": open_keys,
                "slots": [slot_of(k, table.num_slots) for k in open_keys] if table else [],
                "producer_epoch": table.epoch if table else None,
                "owners": [table.owner(k, slot_of(k, table.num_slots)) for k in open_keys] if table else [],
                "in_flight": sorted(set(open_keys) & producer._in_flight),
                "queued": sorted(set(open_keys) & set(producer._queues)),
                "backoff": sorted(set(open_keys) & set(producer._backoff_until)),
                "stats": {"moved": producer.stats.moved, "paused": producer.stats.paused},
            }
            return list(await gathered)

    def verdict(self) -> dict[str, Any]:
        lost, duplicated, reordered = self.checker.verdict()
        acked = self.checker.acked
        return {
            "acked": sum(len(s) for s in acked.values()),
            "received": self.checker.received,
            # stored and delivered, yet never acknowledged to the producer (nor failed)
            "unacked_received": sum(
                len(set(seen) - acked.get(key, set())) for key, seen in self.checker.seen.items()
            ),
            "finished": int(not self.thread.is_alive()),
            "drain_ms": int(self.drained_s * 1000),
            "pending": self.pending,  # sends neither acknowledged nor failed when judged
            "stuck": self.stuck,
            "failed": self.failed,
            "earlier_runs": self.checker.foreign,  # read, not judged: other runs' messages
            "lost": lost,
            "duplicated": duplicated,
            "reordered": reordered,
            "redelivered": self.checker.redelivered(),
        }
