"""Broker configuration and limits. Every limit maps to an INVALID_ARGUMENT or RESOURCE_EXHAUSTED answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from foreshard_broker.routing import DEFAULT_SLOTS

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 1 * MiB
    max_batch_messages: int = 10_000
    max_batch_bytes: int = 16 * MiB
    max_key_bytes: int = 256
    max_keys_per_request: int = 10_000
    max_headers: int = 32
    max_header_bytes: int = 4096
    max_producer_id_bytes: int = 256
    max_group_bytes: int = 128
    # Bytes of publish batches read from one connection but not yet answered; past it the broker
    # stops reading that stream (gRPC flow control pushes back) instead of buffering more.
    max_inflight_bytes_per_connection: int = 64 * MiB
    # Unacknowledged data held in memory; past it publishes get RESOURCE_EXHAUSTED.
    max_retained_bytes: int = 1024 * MiB
    max_fetch_messages: int = 10_000
    max_fetch_bytes: int = 16 * MiB
    max_wait_ms: int = 60_000
    max_selector_items: int = 100_000


@dataclass(frozen=True)
class BrokerConfig:
    shard: int = 0
    num_slots: int = DEFAULT_SLOTS
    ack_deadline_s: float = 30.0
    pause_retry_after_ms: int = 100
    rate_window_s: float = 60.0
    max_tracked_keys: int = 10_000  # per-key accounting past which cold keys fold into their slot
    limits: Limits = field(default_factory=Limits)
    # Retention (0 = no limit): past either limit the oldest messages are dropped for every group
    # still holding them (counted per group), so a forgotten group cannot stop the shard.
    retention_max_age_s: float = 7 * 86400.0
    retention_max_bytes: int = 768 * MiB
    # A shard pod's broker: until the operator pushes a table (epoch 0) it owns nothing, so no
    # producer that bootstrapped from it can put a key on the wrong shard. A standalone broker
    # (the default) owns every slot at epoch 0.
    await_routing: bool = False


@dataclass(frozen=True)
class Batch:
    """One publish batch in columns (cheaper than one object per message on the hot path).

    `headers` is None when no message has headers; otherwise one mapping per message.
    """

    keys: list[str]
    payloads: list[bytes]
    headers: list[Mapping[str, str]] | None = None

    @classmethod
    def of(cls, items: list[tuple[str, bytes]] | list[tuple[str, bytes, Mapping[str, str]]]) -> Batch:
        headers = [item[2] if len(item) == 3 else {} for item in items]
        return cls(
            [item[0] for item in items], [item[1] for item in items], headers if any(headers) else None
        )

    def without(self, indexes: set[int]) -> Batch:
        keep = [i for i in range(len(self.keys)) if i not in indexes]
        headers = None if self.headers is None else [self.headers[i] for i in keep]
        return Batch([self.keys[i] for i in keep], [self.payloads[i] for i in keep], headers)
