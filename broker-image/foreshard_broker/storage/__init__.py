"""Durable, ordered record storage behind one Protocol (knows nothing of gRPC)."""

from foreshard_broker.storage.base import (
    AckRecord,
    BatchRecord,
    CheckpointRecord,
    Chunk,
    ExpireRecord,
    GroupDeletedRecord,
    GroupRecord,
    Message,
    Record,
    ReleaseRecord,
    Storage,
    StorageError,
)
from foreshard_broker.storage.memory import MemoryStorage
from foreshard_broker.storage.segment_log import SegmentLogStorage, SyncMode

__all__ = [
    "AckRecord",
    "BatchRecord",
    "CheckpointRecord",
    "Chunk",
    "ExpireRecord",
    "GroupDeletedRecord",
    "GroupRecord",
    "MemoryStorage",
    "Message",
    "Record",
    "ReleaseRecord",
    "SegmentLogStorage",
    "Storage",
    "StorageError",
    "SyncMode",
]
