"""Checks of Admin requests: each problem is INVALID_ARGUMENT with a sentence, before anything changes.

The Admin API is authenticated (server/auth.py), but a confused orchestrator, a stale retry or a
hand-typed grpcurl call must still not be able to wedge a shard: an epoch that can never be
superseded, an endpoint clients cannot dial, messages forged into a slot this shard has nothing to
do with, or producer state that makes later batches look like duplicates.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

from foreshard_broker.idempotence import EPOCH_AHEAD_NS, MAX_SEQUENCE, UNKNOWN, WINDOW, ProducerHistory
from foreshard_broker.routing import RoutingTable, slot_of
from foreshard_broker.server import validation
from foreshard_broker.server.config import Limits
from foreshard_broker.server.errors import InvalidInput
from foreshard_broker.storage import Message

# An epoch moves forward by small steps (the operator adds 1 per switch). A bigger jump is a bug or
# an attack: an epoch near 2^64 could never be superseded, so the shard could never be re-routed.
MAX_EPOCH_STEP = 1_000_000
MAX_EPOCH = 1 << 62
MAX_RETRY_AFTER_MS = 60_000
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def check_epoch_step(current: int, offered: int) -> None:
    if offered >= MAX_EPOCH:
        raise InvalidInput(f"routing epoch {offered} is out of range; epochs stay below 2^62")
    if offered > current + MAX_EPOCH_STEP:
        raise InvalidInput(
            f"routing epoch {offered} jumps more than {MAX_EPOCH_STEP} past the current epoch {current}; "
            "raise the epoch by 1 per change"
        )


def check_routing_content(limits: Limits, table: RoutingTable) -> None:
    """What `routing.validate` does not know: endpoint syntax and the key limit of pinned keys."""
    for shard, endpoint in sorted(table.endpoints.items()):
        if shard < 0:
            raise InvalidInput(f"routing table names an endpoint for shard {shard}; ordinals are >= 0")
        problem = endpoint_problem(endpoint)
        if problem:
            raise InvalidInput(f"endpoint {endpoint[:100]!r} of shard {shard} is not host:port: {problem}")
    for key in table.pinned:
        if len(key.encode()) > limits.max_key_bytes:
            raise InvalidInput(
                f"pinned key of {len(key.encode())} bytes; the limit is {limits.max_key_bytes}"
            )


def endpoint_problem(endpoint: str) -> str | None:
    """None for `host:port` (a DNS name, an IPv4 address or a bracketed IPv6 address), else why not."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        return "expected host:port"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"port {port[:10]!r} is not a number from 1 to 65535"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "not an IPv6 address inside the brackets"
        return None
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        return "the host is neither an IP address nor a DNS name"
    return None


def check_imported(
    limits: Limits,
    table: RoutingTable,
    me: int,
    source_shard: int,
    messages: Sequence[Message],
    matches: Callable[[Message], bool],
) -> int:
    """Check an ImportBacklog's messages; returns their payload bytes.

    Each message must be a keyed message within the publish limits, its slot must be its key's, and
    it must match the chunk's selector (what the export selected), and it must belong to this shard
    or to the source shard in the routing table this shard serves: copy-ahead imports from the
    current owner, a late delta arrives after the switch. Anything else would plant messages in a
    slot neither shard is responsible for.
    """
    total = 0
    for index, message in enumerate(messages):
        key = message.key
        if not key:
            raise InvalidInput(f"imported message {index} has no key; keyless messages are never migrated")
        where = f"imported message {index} (key {key[:64]!r})"
        if len(key.encode()) > limits.max_key_bytes:
            raise InvalidInput(f"{where} has a key over {limits.max_key_bytes} bytes")
        if len(message.payload) > limits.max_message_bytes:
            raise InvalidInput(
                f"{where} has {len(message.payload)} payload bytes; limit {limits.max_message_bytes}"
            )
        if message.headers:
            validation.check_headers(limits, index, message.headers)
        slot = slot_of(key, table.num_slots)
        if message.slot != slot:
            raise InvalidInput(f"{where} claims slot {message.slot}, but its key hashes to slot {slot}")
        if not matches(message):
            raise InvalidInput(f"{where} (slot {slot}) is outside the chunk's selector")
        owner = table.owner(key, slot)
        if owner not in (me, source_shard):
            raise InvalidInput(
                f"{where} is in slot {slot}, which shard {owner} owns at epoch {table.epoch}: only this "
                f"shard's or the source shard's ({source_shard}) messages can be imported"
            )
        total += len(message.payload)
    return total


def check_producer_history(limits: Limits, producer: str, history: ProducerHistory, now_ns: int) -> None:
    """An imported producer history must be one a shard can have written (see docs/broker.md).

    The target cannot ask the source what it had, so it accepts only what a broker produces: at
    most WINDOW batches in ascending sequence order, each within the publish limits and having
    stored something, with an epoch that is not in the future (the SDK's epoch is its start time).
    Whatever passes can at worst answer `duplicate` for a resend with the same producer id, epoch,
    sequence, message count and payload bytes; a producer that restarted has a newer epoch.
    """
    where = f"producer {producer[:64]!r}"
    if not producer or len(producer.encode()) > limits.max_producer_id_bytes:
        raise InvalidInput(f"producer id must be 1..{limits.max_producer_id_bytes} bytes")
    if not 0 <= history.epoch < MAX_SEQUENCE or history.epoch > now_ns + EPOCH_AHEAD_NS:
        raise InvalidInput(f"{where} has epoch {history.epoch}, more than a day ahead of this shard's clock")
    if not 0 < len(history.batches) <= WINDOW:
        raise InvalidInput(f"{where} lists {len(history.batches)} recent batches; expected 1..{WINDOW}")
    sequences = [batch.sequence for batch in history.batches]
    if sorted(set(sequences)) != sequences or not 0 < sequences[0] <= sequences[-1] < MAX_SEQUENCE:
        raise InvalidInput(f"{where} lists sequences {sequences[:5]}...; expected ascending, 1..2^62-1")
    for batch in history.batches:
        size = limits.max_batch_messages if batch.size == UNKNOWN else batch.size
        if (
            not 0 < size <= limits.max_batch_messages
            or not -1 <= batch.payload_bytes <= limits.max_batch_bytes
        ):
            raise InvalidInput(f"{where} sequence {batch.sequence} has a size outside the batch limits")
        refused = list(batch.refused)
        if sorted(set(refused)) != refused or (refused and refused[-1] >= size) or len(refused) >= size:
            raise InvalidInput(f"{where} sequence {batch.sequence} lists refusals that do not fit its batch")
