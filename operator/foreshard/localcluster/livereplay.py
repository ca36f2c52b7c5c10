"""A replay plan published live through the SDK and consumed by a group with the prefetch agent.

    Plan.counts[step, key] --producer (paced in ticks of TICK_S within each wall step)--> brokers
    brokers --Consumer (prefetch agent, concurrency 64)--> Checker (per key: lost, dup, reordered)

Runs in its own thread with its own event loop (`with LiveReplay(...)`); `stats()` is safe to call
from another thread at any time, and `verdict()` once the block has ended (publishing stops at the
end of the plan, or earlier on `stop`, then the group drains what was acknowledged).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from foreshard.core.simulation.replay import Plan
from foreshard.localcluster.traffic import Checker
from foreshard_broker.client.consumer import Consumer, ConsumerOptions, Message
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.producer import Producer

TICK_S = 0.25
MAX_IN_FLIGHT = 20_000  # sends not yet answered; beyond it the producer waits (and falls behind)
DRAIN_S = 300.0
PROCESSING_S = 0.002  # per message; one message per key at a time, so a key takes at most 500 msg/s


@dataclass
class Stats:
    published: int  # sends issued
    acked: int
    failed: int
    consumed: int
    buffered: int  # messages the consumer holds (buffered and being processed)
    prefetch_target: float  # what the agent sizes the buffer to
    behind_s: float  # how far the producer lags the plan's schedule

    @property
    def backlog(self) -> int:
        return max(0, self.acked - self.consumed)


class LiveReplay:
    def __init__(self, replay: Plan, bootstrap: str, group: str, start_at: float) -> None:
        self.plan, self.bootstrap, self.group, self.start_at = replay, bootstrap, group, start_at
        self.run_id = uuid.uuid4().hex[:12]
        self.checker = Checker({key: [] for key in replay.keys}, self.run_id)
        self.stop = threading.Event()
        self.published = self.acked = self.failed = self.consumed = 0
        self.failures: Counter[str] = Counter()  # why publishes failed, by error kind and text
        self.behind_s = 0.0
        self.pending = 0
        self.drained = False
        self.published_all = False  # the plan's last step was sent
        self.last_seen: dict[str, int] = {}
        self.out_of_order = 0
        self.error: BaseException | None = None
        self.registry = CollectorRegistry()
        self.consumer: Consumer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="live-replay")

    def __enter__(self) -> LiveReplay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=DRAIN_S + 60)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> Stats:
        buffered, target = 0, 0.0
        consumer = self.consumer
        if consumer is not None:
            buffered = consumer.buffer.held_messages
            labels = {"group": self.group, "consumer": f"{self.group}-0"}
            found = self.registry.get_sample_value("foreshard_consumer_prefetch_target_messages", labels)
            target = float(found or 0.0)
        return Stats(self.published, self.acked, self.failed, self.consumed, buffered, target, self.behind_s)

    def verdict(self) -> dict[str, Any]:
        lost, duplicated, reordered = self.checker.verdict()
        return {
            "messages": self.acked,
            "keys": len(self.plan.keys),
            "published": self.published,
            "failed": self.failed,
            "failure_reasons": dict(self.failures.most_common(5)),
            "received": self.checker.received,
            "pending": self.pending,
            "drained": self.drained,
            "lost": lost,
            "duplicated": duplicated,
            "reordered": reordered,
            "error": repr(self.error) if self.error else None,
        }

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported in the verdict
            self.error = error

    async def _main(self) -> None:
        transport = GrpcTransport()
        options = ConsumerOptions(concurrency=64, routing_refresh_s=0.5)
        consumer = Consumer(
            transport, [self.bootstrap], self.group, f"{self.group}-0", options, self.registry
        )

        async def handle(message: Message) -> None:
            await asyncio.sleep(PROCESSING_S)  # an application's work: the prefetch buffer has a job
            self.checker.record(message.payload)
            self.consumed += 1
            # the running verdict: a delivery at or below its key's last sequence is out of order
            _, _, body = message.payload.decode().rpartition("|")
            key, _, seq = body.rpartition(":")
            number = int(seq)
            if number <= self.last_seen.get(key, -1):
                self.out_of_order += 1
            self.last_seen[key] = max(number, self.last_seen.get(key, -1))

        await consumer.start()
        self.consumer = consumer
        running = asyncio.create_task(consumer.run(handle))
        try:
            async with Producer(transport, [self.bootstrap]) as producer:
                await self._publish(producer)
            self.published_all = True
            deadline = time.monotonic() + DRAIN_S
            while not self.checker.complete() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            self.drained = self.checker.complete()
            await asyncio.sleep(1.0)  # a late duplicate would show here
        finally:
            await consumer.close()
            await running
            await transport.close()

    async def _publish(self, producer: Producer) -> None:
        plan = self.plan
        wall = plan.clock.wall_step_s
        ticks = max(1, round(wall / TICK_S))
        sequence = {key: 0 for key in plan.keys}
        futures: set[asyncio.Future[None]] = set()
        for step in range(plan.steps):
            row = plan.counts[step]
            for tick in range(ticks):
                if self.stop.is_set():
                    return
                due = self.start_at + step * wall + tick * wall / ticks
                self.behind_s = max(0.0, time.time() - due)
                if due > time.time():
                    await asyncio.sleep(due - time.time())
                for column, key in enumerate(plan.keys):
                    # this tick's share: the whole messages between the running sums' tick marks
                    count = int(row[column] * (tick + 1) // ticks) - int(row[column] * tick // ticks)
                    for _ in range(count):
                        futures.add(self._send(producer, key, sequence[key]))
                        sequence[key] += 1
                while len(futures) > MAX_IN_FLIGHT:
                    _, futures = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
                futures = {f for f in futures if not f.done()}
        self.pending = len(futures)
        if futures:
            await asyncio.wait(futures, timeout=60)
        self.pending = sum(not f.done() for f in futures)

    def _send(self, producer: Producer, key: str, seq: int) -> asyncio.Future[None]:
        future = asyncio.ensure_future(producer.send(key, f"{self.run_id}|{key}:{seq}".encode()))
        self.published += 1

        def settled(done: asyncio.Future[None]) -> None:
            if done.cancelled() or done.exception() is not None:
                self.failed += 1
                error = None if done.cancelled() else done.exception()
                self.failures[failure_reason(error)] += 1
            else:
                self.acked += 1
                self.checker.acked[key].add(seq)

        future.add_done_callback(settled)
        return future


def failure_reason(error: BaseException | None) -> str:
    """A failed publish's error, short enough to count alike ones together."""
    if error is None:
        return "cancelled"
    text = str(error).split("\n", 1)[0]
    head, since, cause = text.partition(" (its outcome unknown since: ")
    # the error that made a publish's outcome unknown says more than the last one
    return f"{type(error).__name__}: {head[:100]}{since}{cause[:100]}"
