"""Input checks that turn limit violations into INVALID_ARGUMENT answers with actionable messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from foreshard_broker.server.config import Batch, Limits
from foreshard_broker.server.errors import InvalidInput


def check_batch(limits: Limits, producer_id: str, batch: Batch) -> int:
    """Validate one publish batch; returns its payload bytes. Vectorised: this runs per message."""
    count = len(batch.keys)
    if not count:
        raise InvalidInput("publish batch has no messages; send at least one")
    if count > limits.max_batch_messages:
        raise InvalidInput(
            f"publish batch has {count} messages; the limit is {limits.max_batch_messages}, split it"
        )
    if len(producer_id) > limits.max_producer_id_bytes:
        raise InvalidInput(f"producer_id is longer than {limits.max_producer_id_bytes} bytes")
    sizes = list(map(len, batch.payloads))
    if max(sizes) > limits.max_message_bytes:
        index = next(i for i, size in enumerate(sizes) if size > limits.max_message_bytes)
        raise InvalidInput(
            f"message {index} has {sizes[index]} payload bytes; the limit is {limits.max_message_bytes}"
        )
    if max(map(len, batch.keys)) * 4 > limits.max_key_bytes:
        _check_keys(limits, batch.keys)
    if batch.headers is not None:
        for index, headers in enumerate(batch.headers):
            if headers:
                check_headers(limits, index, headers)
    total = sum(sizes)
    if total > limits.max_batch_bytes:
        raise InvalidInput(
            f"publish batch carries {total} bytes; the limit is {limits.max_batch_bytes}, split it"
        )
    _check_distinct_keys(limits, batch.keys, count)
    return total


def _check_keys(limits: Limits, keys: Sequence[str]) -> None:
    for index, key in enumerate(keys):
        size = len(key.encode())
        if size > limits.max_key_bytes:
            raise InvalidInput(
                f"message {index} has a key of {size} bytes; the limit is {limits.max_key_bytes}"
            )


def _check_distinct_keys(limits: Limits, keys: Iterable[str], count: int) -> None:
    if count <= limits.max_keys_per_request:
        return
    distinct = len(set(keys))
    if distinct > limits.max_keys_per_request:
        raise InvalidInput(
            f"publish batch has {distinct} distinct keys; "
            f"the limit is {limits.max_keys_per_request} per request"
        )


def check_headers(limits: Limits, index: int, headers: Mapping[str, str]) -> None:
    if len(headers) > limits.max_headers:
        raise InvalidInput(f"message {index} has {len(headers)} headers; the limit is {limits.max_headers}")
    size = sum(len(name) + len(value) for name, value in headers.items())
    if size > limits.max_header_bytes:
        raise InvalidInput(f"message {index} has {size} header bytes; the limit is {limits.max_header_bytes}")


def check_name(limits: Limits, what: str, name: str) -> None:
    if not name:
        raise InvalidInput(f"{what} name is empty; give it a name")
    if len(name.encode()) > limits.max_group_bytes:
        raise InvalidInput(f"{what} name is longer than {limits.max_group_bytes} bytes")


def check_fetch(limits: Limits, group: str, consumer: str, limit: int, max_bytes: int, wait_ms: int) -> None:
    check_name(limits, "group", group)
    if len(consumer.encode()) > limits.max_group_bytes:
        raise InvalidInput(f"consumer name is longer than {limits.max_group_bytes} bytes")
    if limit > limits.max_fetch_messages:
        raise InvalidInput(f"max_messages={limit} exceeds the limit {limits.max_fetch_messages}")
    if max_bytes > limits.max_fetch_bytes:
        raise InvalidInput(f"max_bytes={max_bytes} exceeds the limit {limits.max_fetch_bytes}")
    if wait_ms > limits.max_wait_ms:
        raise InvalidInput(f"wait_ms={wait_ms} exceeds the limit {limits.max_wait_ms}")


def check_selector(limits: Limits, num_slots: int, slots: Sequence[int], keys: Sequence[str]) -> None:
    if not slots and not keys:
        raise InvalidInput("selector names no slots and no keys; name at least one")
    if len(slots) + len(keys) > limits.max_selector_items:
        raise InvalidInput(f"selector names more than {limits.max_selector_items} slots and keys")
    bad = [slot for slot in slots if slot >= num_slots]
    if bad:
        raise InvalidInput(f"slot(s) {bad[:5]} out of range; this queue has slots 0..{num_slots - 1}")
    if any(not key for key in keys):
        raise InvalidInput("selector contains an empty key; keyless messages are not migrated by key")
