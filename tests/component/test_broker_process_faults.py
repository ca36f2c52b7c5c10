"""Storage faults in a real broker process: injected I/O errors, and a power loss after a SIGKILL.

The broker runs with FORESHARD_BROKER_FAULTS (storage/faults.py): either one fdatasync/write fails
with EIO or ENOSPC, or every sync is journalled so that, after a SIGKILL, the test cuts the files
as a power loss would have (bytes written since the last fdatasync dropped, torn or zeroed).
Then a restarted broker is read back over gRPC: every acknowledged message is there exactly once,
and no resend was answered "duplicate" for a batch that is not stored. Counts are printed.
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from foreshard_broker.client.broker_client import BrokerClient
from foreshard_broker.client.broker_errors import BrokerCallError
from foreshard_broker.idempotence import OUT_OF_ORDER, WINDOW
from foreshard_broker.storage.faults import ENV, power_loss_from_journal
from foreshard_broker.testing import BrokerProcess

pytestmark = pytest.mark.component

PRODUCERS, BATCHES, PER_BATCH = 3, 40, 20
ARGS = ["--segment-bytes", "32768"]


def batch(producer: str, sequence: int) -> list[tuple[str, bytes]]:
    return [(f"k{(sequence + n) % 11}", f"{producer}:{sequence}:{n}".encode() * 8) for n in range(PER_BATCH)]


@dataclass
class Ledger:
    acked: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)
    last_sent: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)


async def produce(endpoint: str, ledger: Ledger, stop_after_acks: int = 0) -> None:
    client = BrokerClient(endpoint)

    async def one(producer: str) -> None:
        for sequence in range(1, BATCHES + 1):
            ledger.last_sent[producer] = sequence
            try:
                response = await client.publish(producer, sequence, batch(producer, sequence))
            except BrokerCallError as error:
                ledger.failures.append((error.code, error.message))
                return
            assert not response.stored.duplicate
            ledger.acked[(producer, sequence)] = [payload for _, payload in batch(producer, sequence)]
            if stop_after_acks and len(ledger.acked) >= stop_after_acks:
                return

    try:
        await asyncio.gather(*(one(f"p{n}") for n in range(PRODUCERS)))
    finally:
        await client.close()


async def read_back(endpoint: str) -> Counter[bytes]:
    client = BrokerClient(endpoint)
    try:
        await client.create_group("audit", latest=False)
        seen: Counter[bytes] = Counter()
        while messages := await client.fetch("audit", "c", max_messages=5000, wait_ms=200):
            seen.update(m.payload for m in messages)
            await client.ack("audit", [m.offset for m in messages])
        return seen
    finally:
        await client.close()


async def resend_everything(endpoint: str, ledger: Ledger, stored: Counter[bytes]) -> Counter[str]:
    """Resend every batch ever sent; a "duplicate" answer must name a batch that is stored."""
    counts: Counter[str] = Counter()
    client = BrokerClient(endpoint)
    try:
        for producer, last in sorted(ledger.last_sent.items()):
            for sequence in range(1, last + 1):
                try:
                    response = await client.publish(producer, sequence, batch(producer, sequence))
                except BrokerCallError as refused:  # older than the window: refused, not "duplicate"
                    assert OUT_OF_ORDER in refused.message and sequence <= last - WINDOW, refused
                    counts["refused_beyond_window"] += 1
                    continue
                payloads = [payload for _, payload in batch(producer, sequence)]
                if response.stored.duplicate:
                    assert all(p in stored for p in payloads), f"{producer}/{sequence}: duplicate, not stored"
                    counts["answered_duplicate"] += 1
                else:
                    counts["stored_again"] += 1
    finally:
        await client.close()
    return counts


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


IO_CASES = [("group", "fdatasync", "EIO"), ("always", "fdatasync", "ENOSPC"), ("none", "write", "ENOSPC")]


@pytest.mark.parametrize(("mode", "op", "code"), IO_CASES, ids=["-".join(c) for c in IO_CASES])
async def test_a_real_broker_with_a_failing_disk_turns_liveness_red_and_refuses_publishes_and_resends(
    tmp_path: Path, mode: str, op: str, code: str
) -> None:
    fault = {"fail": {"op": op, "errno": code, "after": 15}}
    process = BrokerProcess(tmp_path, sync=mode, extra_args=ARGS, env={ENV: json.dumps(fault)}).start()
    try:
        ledger = Ledger()
        await produce(process.endpoint, ledger)
        assert ledger.failures and {c for c, _ in ledger.failures} == {grpc.StatusCode.UNAVAILABLE}, (
            ledger.failures
        )
        assert all("could not be written" in m or "storage failed" in m for _, m in ledger.failures)
        status, body = await asyncio.to_thread(http_status, process.http_url + "/healthz")
        assert status == 503 and "storage failed" in body, (status, body)
        client = BrokerClient(process.endpoint)
        for producer, sequence in sorted(ledger.last_sent.items()):
            with pytest.raises(BrokerCallError) as refused:  # the failed batch's resend
                await client.publish(producer, sequence, batch(producer, sequence))
            assert (
                refused.value.code is grpc.StatusCode.UNAVAILABLE
                and "storage failed" in refused.value.message
            )
        await client.close()
    finally:
        process.kill()
    process.env = {}
    process.start()
    try:
        stored = await read_back(process.endpoint)
        acked = [p for payloads in ledger.acked.values() for p in payloads]
        lost = [p for p in acked if p not in stored]
        assert not lost and max(stored.values()) == 1, (
            f"lost {len(lost)}, twice {sum(v > 1 for v in stored.values())}"
        )
        counts = await resend_everything(process.endpoint, ledger, stored)
        print(f"[real broker io-error sync={mode} {op}={code}] acked_messages={len(acked)} "
              f"refused_batches={len(ledger.failures)} lost=0 {dict(counts)}")  # fmt: skip
    finally:
        process.kill()


POWER_CASES = [("group", "torn"), ("group", "zeros"), ("always", "drop")]


@pytest.mark.parametrize(("mode", "variant"), POWER_CASES, ids=["-".join(c) for c in POWER_CASES])
async def test_a_real_broker_killed_by_a_power_loss_keeps_every_acknowledged_message(
    tmp_path: Path, mode: str, variant: str
) -> None:
    journal = tmp_path / "durable.journal"
    env = {ENV: json.dumps({"journal": str(journal)})}
    process = BrokerProcess(tmp_path / "data", sync=mode, extra_args=ARGS, env=env).start()
    ledger = Ledger()
    try:
        producing = asyncio.ensure_future(produce(process.endpoint, ledger))
        while len(ledger.acked) < PRODUCERS * BATCHES // 2 and not producing.done():
            await asyncio.sleep(0.005)
    finally:
        process.kill()  # mid-publishing: batches are in flight
    await producing
    lost_bytes = power_loss_from_journal(journal, variant, random.Random(variant))
    process.env = {}
    process.start()
    try:
        stored = await read_back(process.endpoint)
        acked = [p for payloads in ledger.acked.values() for p in payloads]
        lost = [p for p in acked if p not in stored]
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages lost to the power loss"
        assert max(stored.values()) == 1
        counts = await resend_everything(process.endpoint, ledger, stored)
        print(f"[real broker power-loss sync={mode} variant={variant}] acked_messages={len(acked)} "
              f"lost=0 {lost_bytes} {dict(counts)}")  # fmt: skip
        # every acknowledged batch is stored (checked above): a resend of it is answered duplicate,
        # or, older than the broker's window of recent batches, refused OUT_OF_ORDER_SEQUENCE
        assert counts["answered_duplicate"] + counts["refused_beyond_window"] >= len(ledger.acked)
    finally:
        process.kill()
