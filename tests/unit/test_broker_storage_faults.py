"""Durability under injected faults: the real segment log and broker, an injected file-ops layer.

A simulated power loss keeps, per file, only what the last fdatasync/fsync made durable (cut
cleanly, torn at a page boundary, or read back as zeros), at a named call: in the middle of the
publishing (the n-th fdatasync, or the n-th write for `sync=none`) or at a segment rotation (the
fsync that closes a segment). An I/O error fails the n-th write or fdatasync with EIO or ENOSPC.

Every case runs in every sync mode against one crash checker. What it promises:

  group, always   every acknowledged message survives a power loss
  none            acknowledged before any fsync: survives a process crash (checked), not a power
                  loss (lost acknowledged messages are counted, not forbidden)
  all modes       a resend is answered "duplicate" only if that batch really is stored; no message
                  is stored twice; after a write error the broker is failed, and refuses every
                  later publish and resend with UNAVAILABLE

Each case prints one line of counts (`pytest -s` shows them; failures carry them too).
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from foreshard_broker.idempotence import WINDOW
from foreshard_broker.server import errors
from foreshard_broker.server.broker import Broker
from foreshard_broker.server.config import Batch, BrokerConfig
from foreshard_broker.storage import SegmentLogStorage
from foreshard_broker.storage.faults import Fault, FaultyFileOps, PowerLoss

pytestmark = pytest.mark.unit

MODES = ("group", "always", "none")
PRODUCERS, BATCHES, PER_BATCH, PAYLOAD = 4, 24, 5, 300
SEGMENT_BYTES = 16 << 10  # a rotation every ~10 batches, so checkpoints are in play


def messages(producer: str, sequence: int) -> Batch:
    keys = [f"k{(sequence + index) % 7}" for index in range(PER_BATCH)]
    payloads = [f"{producer}:{sequence}:{index}:".encode().ljust(PAYLOAD, b".") for index in range(PER_BATCH)]
    return Batch(keys, payloads)


@dataclass
class Ledger:
    acked: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)
    last_sent: dict[str, int] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)


@dataclass
class Counts:
    acked_messages: int = 0
    lost_before_resend: int = 0
    resends: int = 0
    answered_duplicate: int = 0
    stored_again: int = 0
    refused_beyond_window: int = 0  # OUT_OF_ORDER_SEQUENCE: older than the window, never "duplicate"

    def line(self, case: str, extra: dict[str, int] | None = None) -> str:
        fields = {**vars(self), **(extra or {})}
        return f"[{case}] " + " ".join(f"{name}={value}" for name, value in fields.items())


def open_broker(directory: Path, sync: str, ops: FaultyFileOps | None = None) -> Broker:
    storage = SegmentLogStorage(directory, sync=sync, segment_bytes=SEGMENT_BYTES, ops=ops)  # type: ignore[arg-type]
    broker = Broker(BrokerConfig(), storage)
    broker.open()
    return broker


async def produce(broker: Broker, ledger: Ledger) -> None:
    """Producers publish one batch at a time each (so many batches share a flush) until refused."""

    async def one(producer: str) -> None:
        for sequence in range(1, BATCHES + 1):
            ledger.last_sent[producer] = sequence
            batch = messages(producer, sequence)
            try:
                stored = await broker.publish(producer, sequence, batch)
            except errors.BrokerError as error:
                ledger.refusals.append(f"{type(error).__name__}: {error}")
                return
            assert not stored.duplicate, f"a first send of {producer}/{sequence} was called a duplicate"
            ledger.acked[(producer, sequence)] = batch.payloads

    await asyncio.gather(*(one(f"p{n}") for n in range(PRODUCERS)))


async def crash(broker: Broker) -> None:
    storage = broker.storage
    assert isinstance(storage, SegmentLogStorage)
    await storage.abandon()


async def check(broker: Broker, ledger: Ledger, acked_must_survive: bool) -> Counts:
    """Every acked message stored once; resends of everything sent are honest; nothing twice."""
    counts = Counts(acked_messages=sum(map(len, ledger.acked.values())))
    stored = Counter(message.payload for message in broker.state.retained_messages())
    assert max(stored.values(), default=1) == 1, "a message is stored twice after recovery"
    lost = [payload for batch in ledger.acked.values() for payload in batch if payload not in stored]
    counts.lost_before_resend = len(lost)
    if acked_must_survive:
        assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:3]}"
    for producer, last in sorted(ledger.last_sent.items()):
        for sequence in range(1, last + 1):
            batch = messages(producer, sequence)
            present = {m.payload for m in broker.state.retained_messages()}
            counts.resends += 1
            try:
                answer = await broker.publish(producer, sequence, batch)
            except errors.SequenceRefused as refused:
                assert sequence <= broker.state.producers[producer].last - WINDOW, refused
                counts.refused_beyond_window += 1
                continue
            if answer.duplicate:
                counts.answered_duplicate += 1
                missing = [p for p in batch.payloads if p not in present]
                assert not missing, f"resend {producer}/{sequence} answered duplicate but not stored"
            else:
                counts.stored_again += 1
    after = Counter(message.payload for message in broker.state.retained_messages())
    assert max(after.values()) == 1, "a resend stored a message a second time"
    every = [
        p
        for producer, last in ledger.last_sent.items()
        for s in range(1, last + 1)
        for p in messages(producer, s).payloads
    ]
    assert all(payload in after for payload in every), "after resending, some message is still missing"
    return counts


POWER_CASES = [
    (mode, variant, point)
    for mode in MODES
    for variant in ("drop", "torn", "zeros")
    for point in ("mid-publishing", "after-rotation")
] + [("none", "process", "mid-publishing")]


def power_point(mode: str, point: str) -> PowerLoss:
    """Where the power fails. After a rotation: `always` syncs the new segment's checkpoint on its
    own, so its 2nd fdatasync there leaves a durable checkpoint before an unsynced batch."""
    if point == "after-rotation":
        if mode == "none":
            return PowerLoss("write", 25)  # `none` never fsyncs: any write is as good as another
        return PowerLoss("fdatasync", 2 if mode == "always" else 1, after=("fsync", 2))
    return {"group": PowerLoss("fdatasync", 8), "always": PowerLoss("fdatasync", 40)}.get(
        mode, PowerLoss("write", 40)
    )


@pytest.mark.parametrize(("mode", "variant", "point"), POWER_CASES, ids=["-".join(c) for c in POWER_CASES])
async def test_a_power_loss_keeps_every_acknowledged_message_and_no_resend_is_a_false_duplicate(
    tmp_path: Path, mode: str, variant: str, point: str
) -> None:
    ops = FaultyFileOps(power_loss_at=power_point(mode, point))
    broker = open_broker(tmp_path, mode, ops)
    ledger = Ledger()
    await produce(broker, ledger)
    await crash(broker)
    assert ops.image is not None, f"the power loss at {power_point(mode, point)} never happened"
    lost = ops.restore(variant, random.Random(f"{mode}-{variant}-{point}"))
    assert all(r.startswith("Unavailable") for r in ledger.refusals), ledger.refusals
    survives = mode != "none" or variant == "process"
    counts = await check(open_broker(tmp_path, mode), ledger, acked_must_survive=survives)
    print(counts.line(f"power-loss sync={mode} variant={variant} at={point}", lost))
    assert counts.acked_messages > 0 and counts.resends > len(ledger.acked), counts


IO_CASES = [
    (mode, op, code)
    for mode in MODES
    for op in (("write",) if mode == "none" else ("write", "fdatasync"))
    for code in ("EIO", "ENOSPC")
]


@pytest.mark.parametrize(("mode", "op", "code"), IO_CASES, ids=["-".join(c) for c in IO_CASES])
async def test_an_io_error_fails_the_broker_refuses_writes_and_never_answers_a_resend_as_stored(
    tmp_path: Path, mode: str, op: str, code: str
) -> None:
    ops = FaultyFileOps(fail=Fault(op, getattr(errno, code), after=12))
    broker = open_broker(tmp_path, mode, ops)
    ledger = Ledger()
    await produce(broker, ledger)
    assert ops.failed, "the injected error never fired"
    assert broker.failed is not None and os.strerror(getattr(errno, code)) in broker.failed, broker.failed
    assert ledger.refusals and all(r.startswith("Unavailable") for r in ledger.refusals), ledger.refusals
    refused_resends = 0
    for producer, sequence in sorted(ledger.last_sent.items()):  # the failed batch, and a new one
        for attempt in (sequence, sequence + 1):
            with pytest.raises(errors.Unavailable, match="storage failed"):
                await broker.publish(producer, attempt, messages(producer, attempt))
            refused_resends += 1
    with pytest.raises(errors.Unavailable):  # not only publishes: every write is refused
        await broker.create_group("late", latest=False)
    await crash(broker)
    restarted = open_broker(tmp_path, mode)  # a process restart: the page cache survived
    counts = await check(restarted, ledger, acked_must_survive=True)
    print(counts.line(f"io-error sync={mode} {op}={code}", {"refused_after_failure": refused_resends}))
    assert counts.acked_messages > 0


async def test_a_resend_waiting_behind_a_failing_group_flush_is_refused_not_called_a_duplicate(
    tmp_path: Path,
) -> None:
    ops = FaultyFileOps(fail=Fault("fdatasync", errno.EIO, after=1))
    ops.gate = threading.Event()
    broker = open_broker(tmp_path, "group", ops)
    await broker.publish("p", 1, messages("p", 1))  # the first fdatasync succeeds
    original = asyncio.ensure_future(broker.publish("p", 2, messages("p", 2)))
    await asyncio.to_thread(ops.reached.wait)  # the flush of batch 2 is inside its failing fdatasync
    resend = asyncio.ensure_future(broker.publish("p", 2, messages("p", 2)))  # queues a barrier behind it
    await asyncio.sleep(0)
    ops.gate.set()
    outcomes = await asyncio.gather(original, resend, return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [errors.Unavailable, errors.Unavailable], outcomes
    assert broker.failed is not None
    await crash(broker)


async def test_a_rotation_checkpoint_never_claims_the_batch_written_after_it(tmp_path: Path) -> None:
    broker = open_broker(tmp_path, "always")
    await broker.publish("p", 1, messages("p", 1))
    segments = sorted(tmp_path.glob("*.seg"))
    while len(sorted(tmp_path.glob("*.seg"))) == len(segments):  # publish until a batch rotates
        sequence = broker.state.producers["p"].last + 1
        await broker.publish("p", sequence, messages("p", sequence))
    await crash(broker)
    newest = sorted(tmp_path.glob("*.seg"))[-1]
    data = newest.read_bytes()
    checkpoint_end = 8 + int.from_bytes(data[:4], "little")
    newest.write_bytes(data[:checkpoint_end])  # only the checkpoint reached the disk
    restarted = open_broker(tmp_path, "always")
    answer = await restarted.publish("p", sequence, messages("p", sequence))
    assert not answer.duplicate, "the checkpoint claimed a batch that was never stored"
    assert answer.count == PER_BATCH


async def test_compaction_keeps_the_state_a_segment_without_its_checkpoint_still_needs(
    tmp_path: Path,
) -> None:
    broker = open_broker(tmp_path, "group")
    await broker.create_group("g", latest=False)
    sequence = 0
    while len(sorted(tmp_path.glob("*.seg"))) < 3:
        sequence += 1
        await broker.publish("p", sequence, messages("p", sequence))
    await crash(broker)
    last = int(sorted(tmp_path.glob("*.seg"))[-1].stem)
    (tmp_path / f"{last + 1:08d}.seg").write_bytes(b"")  # created, then a crash before its checkpoint
    restarted = open_broker(tmp_path, "group")
    for _ in range(sequence * PER_BATCH):
        deliveries = await restarted.fetch("g", "c", 1000, 0, 0)
        await restarted.ack("g", [d.message.offset for d in deliveries])
        if not deliveries:
            break
    assert restarted.state.retained_count == 0
    assert restarted.compact() > 0  # something may go, but not the checkpoint before the gap
    await crash(restarted)
    again = open_broker(tmp_path, "group")
    assert "g" in again.state.groups and again.state.producers["p"].last == sequence
    assert (await again.publish("p", sequence, messages("p", sequence))).duplicate


async def test_a_zero_filled_tail_is_truncated_and_logged_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = open_broker(tmp_path, "group")
    await broker.publish("p", 1, messages("p", 1))
    await crash(broker)
    newest = sorted(tmp_path.glob("*.seg"))[-1]
    size = newest.stat().st_size
    newest.write_bytes(newest.read_bytes() + bytes(8192))
    restarted = open_broker(tmp_path, "group")
    assert restarted.state.retained_count == PER_BATCH and newest.stat().st_size == size
    assert restarted.storage.recovery.torn_tails == 1  # type: ignore[attr-defined]
    assert any("torn tail" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


async def test_damage_in_the_middle_of_the_last_segment_is_reported_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = open_broker(tmp_path, "group")
    for sequence in (1, 2, 3):
        await broker.publish("p", sequence, messages("p", sequence))
    await crash(broker)
    newest = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a complete record, with more records after it
    newest.write_bytes(bytes(data))
    restarted = open_broker(tmp_path, "group")
    recovery = restarted.storage.recovery  # type: ignore[attr-defined]
    assert recovery.damaged == 1 and recovery.truncated_bytes > 0
    assert any("damaged mid-file" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
