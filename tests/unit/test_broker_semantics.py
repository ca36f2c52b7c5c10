"""Queue semantics without processes: per-key order as a property, replay, routing hash, fresh proto."""

from __future__ import annotations

import filecmp
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreshard_broker import protogen
from foreshard_broker.routing import RoutingTable, slot_of
from foreshard_broker.server import errors
from foreshard_broker.server.admin import Admin, Selector
from foreshard_broker.server.broker import Broker
from foreshard_broker.server.config import Batch, BrokerConfig
from foreshard_broker.server.groups import ConsumerGroup
from foreshard_broker.storage import BatchRecord, CheckpointRecord, MemoryStorage, Message, SegmentLogStorage

pytestmark = pytest.mark.unit

OPS = st.lists(st.tuples(st.sampled_from(["publish", "take", "ack", "nack", "expire"]), st.integers(0, 5)))


@given(OPS)
@settings(max_examples=300, deadline=None)
def test_a_keys_deliveries_never_reorder_or_overlap(ops: list[tuple[str, int]]) -> None:
    stored: dict[int, Message] = {}
    group = ConsumerGroup("g", 0, stored.__getitem__)
    offset, clock = 0, 0.0
    acked: dict[str, list[int]] = {}
    for op, n in ops:
        clock += 1
        if op == "publish":
            stored[offset] = Message(offset, f"k{n % 3}" if n else "", n % 3, b"x")
            group.add(offset, stored[offset].key)
            offset += 1
        elif op == "take":
            taken = group.take(n + 1, 1 << 20, "c", clock + 2, lambda m: True)
            keys = [d.message.key for d in taken if d.message.key]
            assert len(keys) == len(set(keys)), "two messages of one key delivered at once"
        elif op == "ack" and group.inflight:
            message = group.ack(sorted(group.inflight)[n % len(group.inflight)])
            assert message is not None
            if message.key:
                assert acked.setdefault(message.key, [-1])[-1] < message.offset, "acked out of order"
                acked[message.key].append(message.offset)
        elif op == "nack" and group.inflight:
            group.nack(sorted(group.inflight)[n % len(group.inflight)])
        elif op == "expire":
            group.expire(clock)
        keyed = [d.message.key for d in group.inflight.values() if d.message.key]
        assert len(keyed) == len(set(keyed))


def test_slot_hash_is_crc32_of_utf8_mod_slots_and_never_changes() -> None:
    assert slot_of("user-42") == zlib.crc32(b"user-42") % 1024
    assert [slot_of(k) for k in ("a", "order-1", "ключ")] == [
        zlib.crc32(k.encode()) % 1024 for k in ("a", "order-1", "ключ")
    ]
    assert slot_of("a") == 0xE8B7BE43 % 1024  # pinned value: the hash is part of the wire contract
    table = RoutingTable(3, 4, (0, 1, 2, 3), {"vip": 9}, {})
    assert table.owner_of_key("vip") == 9
    assert table.owner("x", 2) == 2


async def test_a_restarted_broker_replays_messages_acks_and_producer_sequences() -> None:
    storage = MemoryStorage()
    broker = Broker(BrokerConfig(), storage)
    broker.open()
    await broker.create_group("g", latest=False)
    batch = Batch.of([("k", b"1"), ("k", b"2"), ("", b"free")])
    await broker.publish("p", 1, batch)
    first = await broker.fetch("g", "c", 10, 0, 0)
    await broker.ack("g", [d.message.offset for d in first if d.message.payload == b"1"])
    await storage.close()
    again = Broker(BrokerConfig(), storage)
    again.open()
    assert (await again.publish("p", 1, batch)).duplicate, "a resend of the same batch"
    with pytest.raises(errors.SequenceRefused, match="a different batch reuses the sequence"):
        await again.publish("p", 1, Batch.of([("k", b"1")]))
    delivered = await again.fetch("g", "c", 10, 0, 0)
    assert sorted(d.message.payload for d in delivered) == [b"2", b"free"]
    assert again.state.next_offset == 3


async def test_a_group_created_latest_skips_the_backlog() -> None:
    broker = Broker(BrokerConfig(), MemoryStorage())
    broker.open()
    await broker.publish("p", 1, Batch.of([("k", b"old")]))
    await broker.create_group("late", latest=True)
    await broker.publish("p", 2, Batch.of([("k", b"new")]))
    assert [d.message.payload for d in await broker.fetch("late", "c", 10, 0, 0)] == [b"new"]


def test_committed_generated_protobuf_code_matches_the_proto(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)
    names = sorted(path.name for path in written)
    committed = protogen.PACKAGE_DIR
    assert names == sorted(path.name for path in committed.glob("*.py")), "generated file set changed"
    stale = [name for name in names if not filecmp.cmp(tmp_path / name, committed / name, shallow=False)]
    assert not stale, f"stale generated code {stale}: run `python -m foreshard_broker.protogen`"


async def test_compaction_deletes_acknowledged_segments_and_a_restart_keeps_what_matters(
    tmp_path: Path,
) -> None:
    storage = SegmentLogStorage(tmp_path, sync="none", segment_bytes=4000)
    broker = Broker(BrokerConfig(), storage)
    broker.open()
    await broker.create_group("g", latest=False)
    for sequence in range(1, 41):
        await broker.publish("p", sequence, Batch.of([(f"k{sequence % 3}", b"x" * 200)] * 5))
    while deliveries := await broker.fetch("g", "c", 1000, 0, 0):
        await broker.ack("g", [d.message.offset for d in deliveries if d.message.offset < 150])
        if all(d.message.offset >= 150 for d in deliveries):
            break
    segments_before = len(list(tmp_path.glob("*.seg")))
    assert broker.compact() > 0
    assert len(list(tmp_path.glob("*.seg"))) < segments_before
    await storage.close()
    again = Broker(BrokerConfig(), SegmentLogStorage(tmp_path, sync="none", segment_bytes=4000))
    again.open()
    assert again.state.next_offset == 200, "offsets never restart after compaction"
    assert (await again.publish("p", 40, Batch.of([("k1", b"x" * 200)] * 5))).duplicate
    pending = sorted(m.offset for m in again.group("g").unacked(lambda m: True))
    assert pending == list(range(150, 200)), "every unacknowledged message survives compaction"


async def test_a_duplicate_of_the_last_batch_repeats_its_refusals_after_compaction_and_restart(
    tmp_path: Path,
) -> None:
    """The remembered refusals outlive deleted segments: the checkpoint carries them."""
    storage = SegmentLogStorage(tmp_path, sync="none", segment_bytes=4000)
    broker = Broker(BrokerConfig(num_slots=16), storage)
    broker.open()
    admin = Admin(broker)
    await broker.create_group("g", latest=False)
    held = next(k for k in (f"h{i}" for i in range(100)) if slot_of(k, 16) != slot_of("k", 16))
    await admin.pause(admin.selector([slot_of(held, 16)], []), 0)
    batch = Batch.of([("k", b"a"), (held, b"b"), ("k", b"c")])
    first = await broker.publish("p", 1, batch)
    assert (first.count, [index for index, _ in first.refusals]) == (2, [1])
    for sequence in range(1, 41):  # another producer fills segments, so p's record is compacted away
        await broker.publish("q", sequence, Batch.of([("k", b"x" * 200)] * 5))
    while deliveries := await broker.fetch("g", "c", 1000, 0, 0):
        await broker.ack("g", [d.message.offset for d in deliveries])
    assert broker.compact() > 0
    await storage.close()
    replayed = list(SegmentLogStorage(tmp_path, sync="none", segment_bytes=4000).replay())
    assert not any(isinstance(r, BatchRecord) and r.producer_id == "p" for r in replayed)
    assert any(isinstance(r, CheckpointRecord) and r.refused.get("p") == (1,) for r in replayed)

    again = Broker(BrokerConfig(num_slots=16), SegmentLogStorage(tmp_path, sync="none", segment_bytes=4000))
    again.open()
    duplicate = await again.publish("p", 1, batch)
    assert duplicate.duplicate and duplicate.count == 2
    [(index, reason)] = duplicate.refusals
    assert index == 1 and isinstance(reason, errors.Paused), "not stored then: must not be reported stored"
    resent = await again.publish("q", 40, Batch.of([("k", b"x" * 200)] * 5))
    assert resent.duplicate and resent.refusals == [], "q's last had none"


async def test_export_and_release_scan_only_the_selected_slots_backlog() -> None:
    broker = Broker(BrokerConfig(num_slots=16), MemoryStorage())
    broker.open()
    admin = Admin(broker)
    await broker.create_group("g", latest=False)
    moving = "k0"
    others = [k for k in (f"k{i}" for i in range(1, 200)) if slot_of(k, 16) != slot_of(moving, 16)]
    for sequence in range(1, 51):
        await broker.publish("p", sequence, Batch.of([(key, b"x") for key in others[:40]] + [(moving, b"m")]))
    first = await broker.fetch("g", "c", 1000, 0, 0)
    await broker.ack("g", [d.message.offset for d in first])  # acked messages leave the index too
    scanned: list[int] = []

    @dataclass(frozen=True)
    class Counting(Selector):
        def matches(self, message: Message) -> bool:
            scanned.append(message.offset)
            return super().matches(message)

    selector = Counting(frozenset({slot_of(moving, 16)}))
    exported = [m for chunk in [c async for c in admin.export_backlog(selector, 0, 0)] for m in chunk]
    assert [m.payload for m in exported] == [b"m"] * 49 and [m.key for m in exported] == [moving] * 49
    assert len(scanned) == 49, "the export must not look at other slots' messages"
    pinned = Counting(keys=frozenset({others[0]}))
    assert len([m async for chunk in admin.export_backlog(pinned, 0, 0) for m in chunk]) == 49
    broker.routing = RoutingTable(2, 16, tuple(1 for _ in range(16)), {}, {})
    assert await admin.release(admin.selector([slot_of(moving, 16)], [])) == 49
    left = list(broker.state.retained_messages())
    assert len(left) == broker.state.retained_count == 50 * 41 - 41 - 49
    assert all(m.slot != slot_of(moving, 16) for m in left), "a released slot leaves nothing behind"


async def test_an_import_drops_the_old_copy_a_shard_kept_of_a_selection_it_lost_without_release() -> None:
    """Shard 1 owned the slot, lost it to shard 0 and was never released (killed before the
    drain, re-created on its data dir). When the slot comes back, its old copy must not be
    delivered again: only what the source (shard 0) sends is the slot's backlog here."""
    broker = Broker(BrokerConfig(shard=1, num_slots=16), MemoryStorage())
    broker.open()
    admin = Admin(broker)
    await broker.create_group("g", latest=False)
    other = next(k for k in (f"o{i}" for i in range(100)) if slot_of(k, 16) != slot_of("k", 16))
    slot = slot_of("k", 16)
    await broker.publish("p", 1, Batch.of([("k", b"old-0"), ("k", b"old-1"), (other, b"stays")]))
    owners = [1] * 16
    owners[slot] = 0
    await admin.update_routing(RoutingTable(2, 16, tuple(owners), {}, {}))  # moved away, no release
    selector = admin.selector([slot], [])
    # what shard 0 holds of the slot now: the same messages (its copy) and a newer one
    sent = [Message(40 + i, "k", slot, payload) for i, payload in enumerate([b"old-1", b"new-2"])]
    assert await admin.import_backlog(0, [(selector, sent)]) == (2, 0)
    kept = [m.payload for m in broker.state.retained_messages() if m.slot == slot]
    assert kept == [b"old-1", b"new-2"], "the old copy is gone, the source's copy is whole"
    assert await admin.import_backlog(0, [(selector, sent)]) == (0, 2)  # a retry: nothing twice

    await admin.update_routing(RoutingTable(3, 16, tuple([1] * 16), {}, {}))  # switched here
    await broker.publish("p", 2, Batch.of([("k", b"new-3")]))
    late = [Message(42, "k", slot, b"new-2b")]  # a late tail after the switch: owned ones stay
    assert await admin.import_backlog(0, [(selector, late)]) == (1, 0)
    delivered = []
    while deliveries := await broker.fetch("g", "c", 1000, 0, 0):
        delivered += [d.message.payload for d in deliveries]
        await broker.ack("g", [d.message.offset for d in deliveries])
    assert sorted(delivered) == sorted([b"stays", b"old-1", b"new-2", b"new-3", b"new-2b"])
