"""Binary encoding of log records. Little-endian, length-prefixed; see docs/broker.md.

Frame:   u32 body_length | u32 crc32(body) | body
Body:    u8 type | fields...
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Mapping

from foreshard_broker.storage.base import (
    NO_HEADERS,
    AckRecord,
    BatchRecord,
    GroupRecord,
    Message,
    Record,
    ReleaseRecord,
    StorageError,
)

FRAME = struct.Struct("<II")
_MSG = struct.Struct("<QIqiQIIH")  # offset, slot, time, origin shard, origin offset, key, payload, headers
_BATCH = struct.Struct("<BHQI")  # type, producer id length, sequence, message count
_LIST = struct.Struct("<BHI")  # type, name length, number of u64 offsets
_GROUP = struct.Struct("<BHQ")
_HEADER = struct.Struct("<HI")
_U64 = struct.Struct("<Q")
T_BATCH, T_ACK, T_GROUP, T_RELEASE = 1, 2, 3, 4


def frame(record: Record) -> bytes:
    body = encode(record)
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def encode(record: Record) -> bytes:
    if isinstance(record, BatchRecord):
        return _encode_batch(record)
    if isinstance(record, AckRecord):
        name = record.group.encode()
        return _LIST.pack(T_ACK, len(name), len(record.offsets)) + name + _pack_u64s(record.offsets)
    if isinstance(record, GroupRecord):
        name = record.group.encode()
        return _GROUP.pack(T_GROUP, len(name), record.from_offset) + name
    return _LIST.pack(T_RELEASE, 0, len(record.offsets)) + _pack_u64s(record.offsets)


def _pack_u64s(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def _encode_batch(record: BatchRecord) -> bytes:
    producer = record.producer_id.encode()
    parts = [_BATCH.pack(T_BATCH, len(producer), record.sequence, len(record.messages)), producer]
    pack = _MSG.pack
    for m in record.messages:
        key = m.key.encode()
        parts.append(
            pack(
                m.offset,
                m.slot,
                m.publish_time_ms,
                m.origin_shard,
                m.origin_offset,
                len(key),
                len(m.payload),
                len(m.headers),
            )
        )
        parts.append(key)
        parts.append(m.payload)
        if m.headers:
            parts.append(_encode_headers(m.headers))
    return b"".join(parts)


def _encode_headers(headers: Mapping[str, str]) -> bytes:
    parts = []
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        parts += [_HEADER.pack(len(n), len(v)), n, v]
    return b"".join(parts)


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
    if kind == T_GROUP:
        _, name_len, from_offset = _GROUP.unpack_from(body)
        return GroupRecord(body[_GROUP.size : _GROUP.size + name_len].decode(), from_offset)
    raise StorageError(f"unknown record type {kind}")


def _decode_batch(body: bytes) -> BatchRecord:
    _, plen, sequence, count = _BATCH.unpack_from(body)
    pos = _BATCH.size
    producer = body[pos : pos + plen].decode()
    pos += plen
    messages = []
    unpack = _MSG.unpack_from
    for _ in range(count):
        offset, slot, ts, oshard, ooffset, klen, plen_, nheaders = unpack(body, pos)
        pos += _MSG.size
        key = body[pos : pos + klen].decode()
        pos += klen
        payload = body[pos : pos + plen_]
        pos += plen_
        headers: Mapping[str, str] = NO_HEADERS
        if nheaders:
            headers, pos = _decode_headers(body, pos, nheaders)
        messages.append(Message(offset, key, slot, payload, headers, ts, oshard, ooffset))
    return BatchRecord(producer, sequence, messages)


def _decode_headers(body: bytes, pos: int, count: int) -> tuple[dict[str, str], int]:
    headers = {}
    for _ in range(count):
        nlen, vlen = _HEADER.unpack_from(body, pos)
        pos += _HEADER.size
        name = body[pos : pos + nlen].decode()
        pos += nlen
        headers[name] = body[pos : pos + vlen].decode()
        pos += vlen
    return headers, pos


def read_frames(data: bytes) -> Iterator[tuple[int, Record]]:
    """Yield (end position, record) for every intact frame; stop at the first torn or corrupt one."""
    pos = 0
    while pos + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, pos)
        body = data[pos + FRAME.size : pos + FRAME.size + length]
        if len(body) < length or zlib.crc32(body) != crc:
            return
        pos += FRAME.size + length
        yield pos, decode(body)
