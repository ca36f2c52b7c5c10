"""Binary encoding of log records. Little-endian, length-prefixed; see docs/broker.md.

Frame:   u32 body_length | u32 crc32(body) | body
Body:    u8 type | fields...   (batch bodies are columnar, see `_encode_batch`)
"""

from __future__ import annotations

import array
import itertools
import json
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from foreshard_broker.idempotence import UNKNOWN, ProducerHistory, SentBatch
from foreshard_broker.storage.base import (
    NO_HEADERS,
    AckRecord,
    BatchRecord,
    CheckpointRecord,
    Chunk,
    ExpireRecord,
    GroupDeletedRecord,
    GroupRecord,
    Record,
    ReleaseRecord,
    StorageError,
)

FRAME = struct.Struct("<II")
_BATCH = struct.Struct("<BHQIQB")  # type, producer id length, sequence, count, first offset, flags
_LIST = struct.Struct("<BHI")  # type, name length, number of u64 offsets
_GROUP = struct.Struct("<BHQ")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
T_BATCH, T_ACK, T_GROUP, T_RELEASE, T_CHECKPOINT, T_GROUP_DELETED, T_EXPIRE = 1, 2, 3, 4, 5, 6, 7
F_IMPORTED, F_HEADERS, F_REFUSED, F_PRODUCER = 1, 2, 4, 8
_PRODUCER = struct.Struct("<Qqq")  # producer epoch, request message count, request payload bytes
NATIVE_BIG_ENDIAN = sys.byteorder == "big"


def frame(record: Record) -> list[bytes]:
    """The record framed for the log, as buffers to write in order: a writer hands them to
    `os.writev`, so a 300 kB batch body is never copied just to be contiguous."""
    body = encode(record)
    crc = 0
    for part in body:
        crc = zlib.crc32(part, crc)
    return [FRAME.pack(sum(map(len, body)), crc), *body]


def encode(record: Record) -> list[bytes]:
    """The record's body, in parts whose concatenation is what `decode` reads."""
    if isinstance(record, BatchRecord):
        return _encode_batch(record)
    return [_encode_small(record)]


def _encode_small(
    record: AckRecord | GroupRecord | CheckpointRecord | ReleaseRecord | GroupDeletedRecord | ExpireRecord,
) -> bytes:
    if isinstance(record, GroupDeletedRecord):
        name = record.group.encode()
        return _GROUP.pack(T_GROUP_DELETED, len(name), 0) + name
    if isinstance(record, ExpireRecord):
        return bytes([T_EXPIRE]) + _U64.pack(record.before_offset)
    if isinstance(record, AckRecord):
        name = record.group.encode()
        return _LIST.pack(T_ACK, len(name), len(record.offsets)) + name + _pack_u64s(record.offsets)
    if isinstance(record, GroupRecord):
        name = record.group.encode()
        return _GROUP.pack(T_GROUP, len(name), record.from_offset) + name
    if isinstance(record, CheckpointRecord):
        return (
            bytes([T_CHECKPOINT])
            + json.dumps(
                {
                    "next_offset": record.next_offset,
                    "groups": record.groups,
                    "producers": record.producers,
                    "imported": [
                        [shard, origin, local] for (shard, origin), local in record.imported.items()
                    ],
                    "refused": {producer: list(indices) for producer, indices in record.refused.items()},
                    "windows": {producer: _history(h) for producer, h in record.windows.items()},
                }
            ).encode()
        )
    return _LIST.pack(T_RELEASE, 0, len(record.offsets)) + _pack_u64s(record.offsets)


def _history(history: ProducerHistory) -> list[object]:
    return [
        history.epoch,
        [[b.sequence, b.first_offset, b.size, b.payload_bytes, list(b.refused)] for b in history.batches],
    ]


def _unhistory(raw: list[Any]) -> ProducerHistory:
    epoch, batches = raw
    return ProducerHistory(epoch, [SentBatch(s, f, n, size, tuple(r)) for s, f, n, size, r in batches])


def _pack_u64s(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def _encode_batch(record: BatchRecord) -> list[bytes]:
    """Columnar: fixed-width arrays (slots, times, lengths) then the key and payload blobs.

    Offsets are consecutive inside a batch, so only the first is stored. The columns come straight
    from the chunk and are packed with C-level `map` / `join`: no Python loop per message.
    """
    chunk = record.chunk
    producer = record.producer_id.encode()
    keys = list(map(str.encode, chunk.keys))
    with_headers = chunk.headers is not None and any(chunk.headers)
    imported = chunk.origin_shards is not None
    flags = (
        (F_IMPORTED if imported else 0)
        | (F_HEADERS if with_headers else 0)
        | (F_REFUSED if record.refused else 0)
        | (F_PRODUCER if record.producer_id else 0)
    )
    parts = [
        _BATCH.pack(T_BATCH, len(producer), record.sequence, len(keys), chunk.first, flags),
        producer,
        _array("I", chunk.slots),
        _array("q", chunk.times),
        _array("I", list(map(len, keys))),
        _array("I", list(map(len, chunk.payloads))),
    ]
    if chunk.origin_shards is not None and chunk.origin_offsets is not None:
        parts.append(_array("i", chunk.origin_shards))
        parts.append(_array("Q", chunk.origin_offsets))
    if with_headers and chunk.headers is not None:
        blob = json.dumps([dict(h) for h in chunk.headers]).encode()
        parts += [_U64.pack(len(blob)), blob]
    if record.refused:
        parts += [_U32.pack(len(record.refused)), _array("I", list(record.refused))]
    if record.producer_id:
        parts.append(_PRODUCER.pack(record.epoch, record.size, record.payload_bytes))
    parts += [b"".join(keys), b"".join(chunk.payloads)]
    return parts


def _array(code: str, values: list[int]) -> bytes:
    packed = array.array(code, values)
    if NATIVE_BIG_ENDIAN:
        packed.byteswap()  # the log is little-endian on every host
    return packed.tobytes()


def _unarray(code: str, body: bytes, pos: int, count: int) -> tuple[array.array[int], int]:
    values = array.array(code)
    end = pos + values.itemsize * count
    values.frombytes(body[pos:end])
    if NATIVE_BIG_ENDIAN:
        values.byteswap()
    return values, end


def decode(body: bytes) -> Record:
    kind = body[0]
    if kind == T_BATCH:
        return _decode_batch(body)
    if kind in (T_ACK, T_RELEASE):
        _, name_len, count = _LIST.unpack_from(body)
        start = _LIST.size + name_len
        offsets = list(struct.unpack_from(f"<{count}Q", body, start))
        if kind == T_ACK:
            return AckRecord(body[_LIST.size : start].decode(), offsets)
        return ReleaseRecord(offsets)
    if kind in (T_GROUP, T_GROUP_DELETED):
        _, name_len, from_offset = _GROUP.unpack_from(body)
        name = body[_GROUP.size : _GROUP.size + name_len].decode()
        return GroupRecord(name, from_offset) if kind == T_GROUP else GroupDeletedRecord(name)
    if kind == T_EXPIRE:
        return ExpireRecord(_U64.unpack_from(body, 1)[0])
    if kind == T_CHECKPOINT:
        raw = json.loads(body[1:])
        imported = {(shard, origin): local for shard, origin, local in raw["imported"]}
        refused = {producer: tuple(indices) for producer, indices in raw.get("refused", {}).items()}
        windows = {producer: _unhistory(h) for producer, h in raw.get("windows", {}).items()}
        return CheckpointRecord(
            raw["next_offset"], raw["groups"], raw["producers"], imported, refused, windows
        )
    raise StorageError(f"unknown record type {kind}")


def _decode_batch(body: bytes) -> BatchRecord:
    _, plen, sequence, count, first, flags = _BATCH.unpack_from(body)
    pos = _BATCH.size
    producer = body[pos : pos + plen].decode()
    pos += plen
    slots, pos = _unarray("I", body, pos, count)
    times, pos = _unarray("q", body, pos, count)
    key_lens, pos = _unarray("I", body, pos, count)
    payload_lens, pos = _unarray("I", body, pos, count)
    shards: list[int] | None = None
    origins: list[int] | None = None
    if flags & F_IMPORTED:
        shard_array, pos = _unarray("i", body, pos, count)
        origin_array, pos = _unarray("Q", body, pos, count)
        shards, origins = shard_array.tolist(), origin_array.tolist()
    headers: list[Mapping[str, str]] | None = None
    if flags & F_HEADERS:
        (size,) = _U64.unpack_from(body, pos)
        headers = [h or NO_HEADERS for h in json.loads(body[pos + 8 : pos + 8 + size])]
        pos += 8 + size
    refused: tuple[int, ...] = ()
    if flags & F_REFUSED:
        (how_many,) = _U32.unpack_from(body, pos)
        indices, pos = _unarray("I", body, pos + 4, how_many)
        refused = tuple(indices)
    epoch, size, payload_bytes = 0, UNKNOWN, UNKNOWN
    if flags & F_PRODUCER:
        epoch, size, payload_bytes = _PRODUCER.unpack_from(body, pos)
        pos += _PRODUCER.size
    keys = _split(body, pos, key_lens)
    pos += sum(key_lens)
    payloads = _split(body, pos, payload_lens)
    decoded = [key.decode() for key in keys]
    chunk = Chunk(first, decoded, slots.tolist(), payloads, times.tolist(), headers, shards, origins)
    return BatchRecord(producer, sequence, chunk, refused, epoch, size, payload_bytes)


def _split(body: bytes, pos: int, lengths: Sequence[int]) -> list[bytes]:
    ends = list(itertools.accumulate(lengths, initial=pos))
    return [body[start:end] for start, end in itertools.pairwise(ends)]


def read_frames(data: bytes) -> Iterator[tuple[int, Record]]:
    """Yield (end position, record) for every intact frame; stop at the first torn or corrupt one.

    No record has an empty body, so a zero length ends the frames too: a zero-filled tail (length
    0, CRC 0, which is the CRC of nothing) is a torn write, not a record.
    """
    pos = 0
    while pos + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, pos)
        body = data[pos + FRAME.size : pos + FRAME.size + length]
        if not length or len(body) < length or zlib.crc32(body) != crc:
            return
        try:
            record = decode(body)
        except (IndexError, ValueError, struct.error, UnicodeDecodeError) as error:
            raise StorageError(
                f"record at byte {pos} has a valid checksum but cannot be decoded: {error}"
            ) from error
        pos += FRAME.size + length
        yield pos, record
