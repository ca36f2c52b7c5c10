"""One contract, every storage implementation (memory, segment log in each sync mode)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from foreshard_broker.storage import (
    AckRecord,
    BatchRecord,
    GroupRecord,
    MemoryStorage,
    Message,
    Record,
    ReleaseRecord,
    SegmentLogStorage,
    Storage,
    StorageError,
)

pytestmark = pytest.mark.unit

Factory = Callable[[Path], Storage]
IMPLEMENTATIONS: dict[str, Factory] = {
    "memory": lambda path: MemoryStorage(),
    "segment-group": lambda path: SegmentLogStorage(path, sync="group"),
    "segment-always": lambda path: SegmentLogStorage(path, sync="always"),
    "segment-none-small-segments": lambda path: SegmentLogStorage(path, sync="none", segment_bytes=300),
}


def sample() -> list[Record]:
    batch = BatchRecord.of(
        "producer-1",
        7,
        [
            Message(0, "k", 5, b"one", {}, 1000),
            Message(1, "ключ", 9, b"\x00two", {"trace": "abc", "h": ""}, 1001),
            Message(2, "", 0xFFFFFFFF, b"", {}, 1002, origin_shard=3, origin_offset=99),
        ],
    )
    refusing = BatchRecord.of("producer-2", 3, [Message(3, "k", 5, b"kept", {}, 1003)], refused=(0, 2))
    carried = BatchRecord.of("producer-3", 11, [], refused=(4,))  # a sequence carried by ImportGroupState
    return [
        GroupRecord("g", 0),
        batch,
        AckRecord("g", [0, 2]),
        ReleaseRecord([1]),
        BatchRecord.of("", 0, []),
        refusing,
        carried,
    ]


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Storage]:
    factory = IMPLEMENTATIONS[request.param]
    shared: list[Storage] = []

    def reopen() -> Storage:
        if shared and isinstance(shared[-1], MemoryStorage):
            return shared[-1]  # the in-memory twin "survives" by being the same object
        storage = factory(tmp_path / "log")
        shared.append(storage)
        return storage

    return reopen


async def test_appended_records_replay_identically_and_in_order(make: Callable[[], Storage]) -> None:
    storage = make()
    assert list(storage.replay()) == []
    for record in sample():
        await storage.append(record)
    await storage.close()
    again = make()
    assert list(again.replay()) == sample()
    await again.close()


async def test_barrier_waits_for_everything_appended_before_it(make: Callable[[], Storage]) -> None:
    storage = make()
    list(storage.replay())
    futures = [storage.append(record) for record in sample()]
    await storage.barrier()
    assert all(future.done() for future in futures)
    await storage.close()


async def test_appends_after_a_reopen_extend_the_log(make: Callable[[], Storage]) -> None:
    storage = make()
    list(storage.replay())
    await storage.append(GroupRecord("a", 0))
    await storage.close()
    storage = make()
    assert list(storage.replay()) == [GroupRecord("a", 0)]
    await storage.append(GroupRecord("b", 5))
    await storage.close()
    assert list(make().replay()) == [GroupRecord("a", 0), GroupRecord("b", 5)]


async def test_torn_tail_of_the_last_segment_is_truncated(tmp_path: Path) -> None:
    storage = SegmentLogStorage(tmp_path, sync="group")
    list(storage.replay())
    await storage.append(GroupRecord("kept", 0))
    await storage.close()
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    with open(segment, "ab") as handle:
        handle.write(b"\x40\x00\x00\x00\x00\x00")  # a frame header cut short by a crash
    size = segment.stat().st_size
    reopened = SegmentLogStorage(tmp_path, sync="group")
    assert list(reopened.replay()) == [GroupRecord("kept", 0)]
    assert segment.stat().st_size < size
    await reopened.append(GroupRecord("after", 1))
    await reopened.close()
    assert list(SegmentLogStorage(tmp_path).replay()) == [GroupRecord("kept", 0), GroupRecord("after", 1)]


async def test_corruption_inside_an_older_segment_is_an_error_not_data_loss(tmp_path: Path) -> None:
    storage = SegmentLogStorage(tmp_path, sync="none", segment_bytes=10)
    list(storage.replay())
    for n in range(3):
        await storage.append(GroupRecord(f"g{n}", n))
    await storage.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="corrupt"):
        list(SegmentLogStorage(tmp_path).replay())


async def test_group_commit_shares_fsyncs_between_concurrent_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    storage = SegmentLogStorage(tmp_path, sync="group")
    list(storage.replay())
    futures = [storage.append(GroupRecord(f"g{n}", n)) for n in range(200)]
    for future in futures:
        await future
    assert 1 <= len(syncs) < 20, "200 concurrent appends must share a handful of fsyncs"
    await storage.close()
