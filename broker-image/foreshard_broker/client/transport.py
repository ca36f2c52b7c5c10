"""The transport seam between the SDK (producer, consumer, mover) and the brokers.

The producer and consumer speak only to :class:`Transport`.  Two implementations exist: the gRPC one
(``grpc_transport.py``, adapting the low-level broker client) and the in-memory twin (``twin.py``)
with the same ordering, ``MOVED`` and ``PAUSED`` semantics, for fast tests and the prefetch benchmark.

Publish answers with one outcome per message (the broker stores what it does not refuse, and refuses
per slot), so a producer re-routes or backs off exactly the refused keys; the other calls raise
:class:`TransportError` when the broker cannot be reached.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from foreshard_broker.routing import RoutingTable, slot_of

__all__ = [
    "AdminTransport",
    "Copied",
    "Delivery",
    "Fenced",
    "FetchRequest",
    "OutboundMessage",
    "PublishOutcome",
    "PublishStatus",
    "RoutingTable",
    "Selection",
    "Transport",
    "TransportError",
    "slot_of",
]


class TransportError(Exception):
    """The broker could not be reached or failed; the call may or may not have taken effect.

    ``refused`` is True when the broker answered and refused (bad input, a precondition such as
    ownership or a lease held by someone else): retrying the same call will not help.
    ``no_effect`` is True when the call certainly took no effect: it never left the client (no
    connection to the broker could be opened), or a draining broker turned it away before doing
    anything. Such a call may go to another broker instead.
    """

    def __init__(self, message: str, refused: bool = False, no_effect: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        self.no_effect = no_effect


@dataclass(frozen=True)
class OutboundMessage:
    """A message to publish; ``key`` None means unordered."""

    key: str | None
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.payload)


class PublishStatus(Enum):
    OK = "ok"
    MOVED = "moved"
    PAUSED = "paused"
    REJECTED = "rejected"


@dataclass(frozen=True)
class PublishOutcome:
    """The fate of one message of a batch."""

    status: PublishStatus
    owner: int = -1
    owner_endpoint: str = ""
    epoch: int = 0
    retry_after_s: float = 0.0
    reason: str = ""
    # The refused slot, when the broker names it (-1: unknown), so only that slot's keys wait.
    slot: int = -1
    # REJECTED for the batch's producer epoch or sequence: idempotence.OUT_OF_ORDER or FENCED.
    sequence_error: str = ""


@dataclass(frozen=True)
class Delivery:
    """A fetched message; ``receipt`` is what its ack names (the delivering broker's offset)."""

    key: str | None
    payload: bytes
    slot: int
    offset: int
    receipt: str
    headers: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1
    # Seconds since the epoch on the broker's clock (the twin uses its event loop's clock).
    publish_time: float = 0.0

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True)
class FetchRequest:
    group: str
    consumer: str
    max_messages: int
    max_bytes: int
    wait_s: float


class Transport(Protocol):
    """Everything producers and consumers need from brokers, addressed by endpoint."""

    async def routing(self, endpoint: str) -> RoutingTable: ...

    async def publish(
        self,
        endpoint: str,
        producer_id: str,
        sequence: int,
        messages: Sequence[OutboundMessage],
        epoch: int = 0,
    ) -> list[PublishOutcome]:
        """Store a batch; one outcome per message, in order.  The broker stores every message it
        does not refuse (MOVED, PAUSED: refusals are per slot); a failed batch stores nothing.
        ``producer_id``, ``epoch`` and ``sequence`` are judged as ``foreshard_broker.idempotence``
        says: a resend of a recent stored batch is answered OK without storing it again; a gap,
        an unknown older sequence or an older epoch is REJECTED with ``sequence_error`` set."""
        ...

    async def fetch(self, endpoint: str, request: FetchRequest) -> list[Delivery]: ...

    async def ack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None: ...

    async def nack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None: ...

    async def create_group(self, endpoint: str, group: str) -> None:
        """Make sure the group exists on that broker, reading from the earliest message."""
        ...

    async def backlog(self, endpoint: str) -> int:
        """Messages waiting on that shard (for placing keyless messages)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Selection:
    """What a move carries: ordinary keys of slots (pinned keys excluded) and/or pinned keys."""

    slots: tuple[int, ...] = ()
    keys: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ", ".join([*(f"slot {s}" for s in self.slots), *(f"key {k!r}" for k in self.keys)])


@dataclass(frozen=True)
class Copied:
    next_offset: int  # the next copy of the selection starts here
    messages: int  # messages the export carried (imported now or skipped as imported before)
    bytes: int = 0  # their keys and payloads


@dataclass(frozen=True)
class Fenced:
    """A fence held on the source, its delta and group state imported on the target."""

    inflight: int  # deliveries still unacked when the group state was taken (they move as redeliveries)
    high_offset: int  # the next copy of the selection starts here
    imported: int
    renewed: bool
    expires_at_ms: int  # source wall clock
    bytes: int = 0  # keys and payloads of the delta
    settled_ms: int = 0  # how long the source waited for in-flight deliveries to be acked


class AdminTransport(Transport, Protocol):
    """The admin calls a move needs (see ``mover.py``); each is idempotent."""

    async def connect(self, endpoints: Iterable[str], timeout_s: float) -> None:
        """Open the admin connections to ``endpoints`` before calls that must be quick (a move's
        fence and switch: connecting is not part of the keys' pause). A broker that does not
        answer within ``timeout_s`` is left for the calls themselves to report."""
        ...

    async def copy_backlog(
        self, source: str, target: str, selection: Selection, from_offset: int, max_bytes: int = 0
    ) -> int:
        """Copy the selection's messages from source offset ``from_offset`` on (at most about
        ``max_bytes`` of payload when given); returns the next source offset to copy from."""
        ...

    async def copy(
        self, source: str, target: str, selection: Selection, from_offset: int, max_bytes: int = 0
    ) -> Copied:
        """``copy_backlog``, also saying how many messages the export carried (a copy-ahead
        repeats while rounds are large, and fences once a round is small)."""
        ...

    async def fence(
        self,
        source: str,
        target: str,
        selection: Selection,
        lease_id: str,
        ttl_s: float,
        from_offset: int,
        settle_s: float,
    ) -> Fenced:
        """Fence the selection on the source under a lease (it lapses after ``ttl_s`` unless renewed
        by fencing again), wait up to ``settle_s`` for its in-flight deliveries, and import the delta
        and the group state on the target: two round trips."""
        ...

    async def unfence(self, source: str, lease_id: str) -> bool: ...

    async def discard(self, target: str, selection: Selection) -> int:
        """Drop a rolled-back move's partial copy on the target."""
        ...

    async def switch_source(
        self, source: str, target: str, table: RoutingTable, selection: Selection, from_offset: int
    ) -> bool:
        """Push ``table`` to the source first; if the source had stopped fencing the selection (its
        lease lapsed), copy the tail and the group state to the target again before anyone else is
        switched. Returns whether that re-copy was needed."""
        ...

    async def update_routing(self, endpoint: str, table: RoutingTable) -> None: ...

    async def release(self, endpoint: str, selection: Selection) -> None:
        """Drop the selection's data from a shard that no longer owns it."""
        ...
