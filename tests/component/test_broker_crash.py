"""Crash safety: SIGKILL the broker repeatedly while producers publish; nothing acknowledged is lost.

Two producers publish 120k messages over 200 keys in pipelined batches (group-commit fsync). The
broker is killed five times at acknowledgement milestones and restarted; producers resend every
unanswered batch with its original sequence (idempotent retry). Finally one group reads everything
back: every message acknowledged to a producer is present exactly once, in per-key publish order.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from foreshard_broker.client.broker_client import BrokerClient, publish_request
from foreshard_broker.client.broker_errors import BrokerCallError
from foreshard_broker.testing import BrokerProcess

pytestmark = [pytest.mark.component, pytest.mark.slow]

PRODUCERS, BATCHES, PER_BATCH, KEYS, WINDOW = 2, 300, 200, 200, 8
KILL_AT = (15_000, 35_000, 55_000, 75_000, 95_000)


@dataclass
class Run:
    process: BrokerProcess
    generation: int = 0
    restarted: asyncio.Event = field(default_factory=asyncio.Event)
    acked: list[bytes] = field(default_factory=list)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    duplicates: int = 0
    sends: int = 0


def plan(producer: int) -> list[Any]:
    counters = [0] * KEYS
    requests = []
    for sequence in range(1, BATCHES + 1):
        messages = []
        for n in range(PER_BATCH):
            key = (sequence * 7 + n * 13 + producer) % KEYS
            messages.append((f"k{key}", f"{producer}:{key}:{counters[key]}".encode()))
            counters[key] += 1
        requests.append(publish_request(f"crash-producer-{producer}", sequence, messages))
    return requests


async def produce(run: Run, requests: list[Any]) -> None:
    done = [0]  # batches answered so far; survives a broken stream
    while done[0] < len(requests):
        generation = run.generation
        client = BrokerClient(run.process.endpoint)
        try:
            await _stream(run, client, requests, done)
        except (BrokerCallError, EOFError, grpc.aio.AioRpcError):
            if run.generation == generation:  # the broker is down and not yet back: wait for it
                await run.restarted.wait()
        finally:
            await client.close()


async def _stream(run: Run, client: BrokerClient, requests: list[Any], done: list[int]) -> None:
    """Resend from the first unanswered batch with its original sequence, pipelining WINDOW batches."""
    stream = client.publish_stream()
    sent = done[0]
    while done[0] < len(requests):
        while sent < len(requests) and sent - done[0] < WINDOW:
            await stream.send(requests[sent])
            run.sends += 1
            sent += 1
        response = await stream.receive()
        request = requests[done[0]]
        assert response.WhichOneof("outcome") == "stored", response
        assert response.sequence == request.sequence, "answers come back in request order"
        run.duplicates += response.stored.duplicate
        run.acked.extend(request.payloads)
        run.progress.set()
        done[0] += 1
    await stream.close()


async def crash_repeatedly(run: Run) -> None:
    for milestone in KILL_AT:
        while len(run.acked) < milestone:
            run.progress.clear()
            await run.progress.wait()
        run.process.kill()
        run.restarted.clear()
        run.generation += 1
        await asyncio.to_thread(run.process.start)
        run.restarted.set()


async def read_back(process: BrokerProcess) -> list[tuple[str, bytes]]:
    client = BrokerClient(process.endpoint)
    delivered: list[tuple[str, bytes]] = []
    try:
        while batch := await client.fetch("audit", "reader", max_messages=1000, wait_ms=500):
            delivered += [(m.key, m.payload) for m in batch]
            await client.ack("audit", [m.offset for m in batch])
    finally:
        await client.close()
    return delivered


@pytest.mark.timeout(180)
async def test_sigkill_during_publishing_loses_and_duplicates_nothing_acknowledged(tmp_path: Any) -> None:
    # Small segments: crashes also hit segment rotation and its checkpoint records.
    process = BrokerProcess(
        tmp_path / "crash", sync="group", extra_args=["--segment-bytes", "2000000"]
    ).start()
    try:
        admin = process.admin_client()
        await admin.create_group("audit")
        await admin.close()
        run = Run(process)
        requests = [plan(p) for p in range(PRODUCERS)]
        await asyncio.gather(crash_repeatedly(run), *(produce(run, r) for r in requests))
        assert run.generation == len(KILL_AT)
        assert len(run.acked) == PRODUCERS * BATCHES * PER_BATCH >= 100_000
        assert run.sends > PRODUCERS * BATCHES, "kills must interrupt batches in flight (they get resent)"
        delivered = await read_back(process)
    finally:
        process.kill()
    counts = Counter(payload for _, payload in delivered)
    assert not [p for p, n in counts.items() if n > 1], "a message is stored twice"
    assert set(counts) == set(run.acked), "an acknowledged message is missing"
    last: dict[tuple[str, str], int] = {}
    for key, payload in delivered:
        producer, key_number, counter = payload.decode().split(":")
        assert key == f"k{key_number}"
        assert int(counter) == last.get((producer, key), -1) + 1, f"key {key} out of order"
        last[(producer, key)] = int(counter)
