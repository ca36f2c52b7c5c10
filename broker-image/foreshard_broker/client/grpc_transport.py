"""The real :class:`AdminTransport`: the SDK's seam mapped onto the low-level gRPC broker client.

One channel pair (data, admin) per endpoint, opened on first use.  Broker answers become SDK values:
a PublishResponse (stored, with per-message refusals, or a failure) becomes one
:class:`PublishOutcome` per message; an unreachable broker or any other failed call becomes
:class:`TransportError`, except an unknown group on fetch, which creates the group (reading from the
latest message: see `fetch`) and comes back empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from typing import Any, TypeVar

import grpc

from foreshard_broker.client.broker_client import AdminClient, BrokerClient, chunk_bytes
from foreshard_broker.client.broker_errors import BrokerCallError
from foreshard_broker.client.transport import (
    Copied,
    Delivery,
    Fenced,
    FetchRequest,
    OutboundMessage,
    PublishOutcome,
    PublishStatus,
    RoutingTable,
    Selection,
    TransportError,
)
from foreshard_broker.idempotence import FENCED, OUT_OF_ORDER
from foreshard_broker.wire import DRAINING

T = TypeVar("T")
_STORED = PublishOutcome(PublishStatus.OK)

# Failures worth retrying the same batch for, after a short wait (overload, draining, restarting).
_RETRYABLE = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
_RETRY_AFTER_S = 0.05
# Definite answers: the broker refused the call as it stands (retrying it will not help).
_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
_PAUSE_RETRY_AFTER_MS = 5
# A data call that has not answered in this long is abandoned and, for a publish, resent with the
# same sequence (stored once whatever became of the first): an answer that never comes (a stream
# lost between the broker and the client, a broker that stopped answering) must not hang a producer.
CALL_TIMEOUT_S = 10.0
# An outcome the client cannot know: the broker may have stored the batch. Resend, never fail.
_UNKNOWN_OUTCOME = {*_RETRYABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


async def _guard(call: Awaitable[T], endpoint: str) -> T:
    try:
        return await call
    except BrokerCallError as error:
        raise _call_error(error, endpoint, error.code in _REFUSALS) from error
    except grpc.aio.AioRpcError as error:
        raise _transport_error(error, endpoint) from error


def _call_error(error: BrokerCallError, endpoint: str, refused: bool = False) -> TransportError:
    return TransportError(f"{endpoint}: {error}", refused, no_effect(error.code, error.message))


def _transport_error(error: grpc.aio.AioRpcError, endpoint: str) -> TransportError:
    details = error.details() or ""
    return TransportError(
        f"{endpoint}: {error.code().name}: {details}", no_effect=no_effect(error.code(), details)
    )


def no_effect(code: grpc.StatusCode, details: str) -> bool:
    """True when the call certainly took no effect: gRPC fails a call with "failed to connect to all
    addresses" when no connection to the broker could be opened, before anything is written, and
    a draining broker refuses a call with its DRAINING reason before doing anything."""
    if code is not grpc.StatusCode.UNAVAILABLE:
        return False
    return details.startswith(DRAINING + ":") or "failed to connect" in details.lower()


async def _guard_stream(stream: AsyncIterator[T], endpoint: str) -> AsyncIterator[T]:
    try:
        async for item in stream:
            yield item
    except BrokerCallError as error:
        raise _call_error(error, endpoint, error.code in _REFUSALS) from error
    except grpc.aio.AioRpcError as error:
        raise _transport_error(error, endpoint) from error


def outcomes_of(response: Any, count: int) -> list[PublishOutcome]:
    """A PublishResponse as one outcome per message: stored, or its refusal."""
    if response.WhichOneof("outcome") == "failure":
        return [_failure(_status_code(response.failure.code), response.failure.message)] * count
    outcomes = [_STORED] * count
    for refusal in response.refusals:
        outcomes[refusal.index] = _refusal(refusal)
    return outcomes


def _refusal(refusal: Any) -> PublishOutcome:
    if refusal.WhichOneof("reason") == "moved":
        moved = refusal.moved
        return PublishOutcome(
            PublishStatus.MOVED, moved.owner_shard, moved.owner_endpoint, moved.epoch, slot=moved.slot
        )
    paused = refusal.paused
    return PublishOutcome(
        PublishStatus.PAUSED, epoch=paused.epoch, retry_after_s=paused.retry_after_ms / 1000, slot=paused.slot
    )


def _failure(code: grpc.StatusCode, message: str) -> PublishOutcome:
    """A failed batch stored nothing: a retryable one goes back to the queue, the others fail."""
    if code in _RETRYABLE:
        return PublishOutcome(PublishStatus.PAUSED, retry_after_s=_RETRY_AFTER_S, reason=message)
    # The broker's sequence refusals start with their reason (in the stream's Failure.reason too).
    sequence_error = next((r for r in (OUT_OF_ORDER, FENCED) if message.startswith(r + ":")), "")
    return PublishOutcome(
        PublishStatus.REJECTED, reason=f"{code.name}: {message}", sequence_error=sequence_error
    )


def _status_code(number: int) -> grpc.StatusCode:
    return next((code for code in grpc.StatusCode if code.value[0] == number), grpc.StatusCode.UNKNOWN)


def delivery_of(message: Any) -> Delivery:
    return Delivery(
        message.key or None,
        message.payload,
        message.slot,
        message.offset,
        str(message.offset),
        dict(message.headers),
        message.attempt,
        message.publish_time_ms / 1000,
    )


class GrpcTransport:
    """:class:`AdminTransport` over real brokers, addressed by ``host:port``."""

    def __init__(self, admin_token: str | None = None, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        """`admin_token` is needed only for the admin calls of a slot move (`mover.py`); producers
        and consumers use the data API alone (routing, backlog and group joins included).
        `call_timeout_s` bounds every data call (a fetch: beyond its long poll); admin calls are
        bounded by their caller (a copy may rightly take long)."""
        self._data: dict[str, BrokerClient] = {}
        self._admin: dict[str, AdminClient] = {}
        self._admin_token = admin_token
        self.call_timeout_s = call_timeout_s

    def data(self, endpoint: str) -> BrokerClient:
        client = self._data.get(endpoint)
        if client is None:
            client = self._data[endpoint] = BrokerClient(endpoint)
        return client

    def admin(self, endpoint: str) -> AdminClient:
        client = self._admin.get(endpoint)
        if client is None:
            client = self._admin[endpoint] = AdminClient(endpoint, token=self._admin_token)
        return client

    async def close(self) -> None:
        for client in [*self._data.values(), *self._admin.values()]:
            await client.close()
        self._data.clear()
        self._admin.clear()

    # --- data --------------------------------------------------------------------------------
    async def routing(self, endpoint: str) -> RoutingTable:
        return await _guard(self.data(endpoint).get_routing(self.call_timeout_s), endpoint)

    async def publish(
        self,
        endpoint: str,
        producer_id: str,
        sequence: int,
        messages: Sequence[OutboundMessage],
        epoch: int = 0,
    ) -> list[PublishOutcome]:
        items = [(m.key or "", m.payload, m.headers) for m in messages]
        try:
            response = await self.data(endpoint).publish(
                producer_id, sequence, items, epoch, self.call_timeout_s
            )
        except BrokerCallError as error:
            if error.code in _UNKNOWN_OUTCOME:
                # Unreachable, overloaded, draining, or no answer in time: the outcome may be
                # unknown, so the producer resends the same sequence (stored once, whatever happened).
                raise _call_error(error, endpoint) from error
            return [_failure(error.code, error.message)] * len(messages)
        except grpc.aio.AioRpcError as error:
            raise _transport_error(error, endpoint) from error
        return outcomes_of(response, len(messages))

    async def fetch(self, endpoint: str, request: FetchRequest) -> list[Delivery]:
        client = self.data(endpoint)
        wait_ms = int(request.wait_s * 1000)
        call = client.fetch(
            request.group,
            request.consumer,
            request.max_messages,
            request.max_bytes,
            wait_ms,
            self.call_timeout_s,
        )
        try:
            messages = await call
        except BrokerCallError as error:
            if error.code is not grpc.StatusCode.NOT_FOUND:
                raise _call_error(error, endpoint) from error
            # The group vanished while this consumer ran (deleted, or a broker that lost it): join
            # it again from the LATEST message, so a stale or mistyped consumer does not pin the
            # whole backlog again. A consumer creates its group from the earliest when it starts.
            await _guard(client.create_group(request.group, latest=True), endpoint)
            return []
        except grpc.aio.AioRpcError as error:
            raise _transport_error(error, endpoint) from error
        return [delivery_of(message) for message in messages]

    async def ack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None:
        await _guard(
            self.data(endpoint).ack(group, [int(r) for r in receipts], self.call_timeout_s), endpoint
        )

    async def nack(self, endpoint: str, group: str, consumer: str, receipts: Sequence[str]) -> None:
        await _guard(
            self.data(endpoint).nack(group, [int(r) for r in receipts], self.call_timeout_s), endpoint
        )

    async def create_group(self, endpoint: str, group: str) -> None:
        await _guard(self.data(endpoint).create_group(group, timeout=self.call_timeout_s), endpoint)

    async def backlog(self, endpoint: str) -> int:
        answer = await _guard(self.data(endpoint).backlog(self.call_timeout_s), endpoint)
        return int(answer.retained_messages)

    # --- admin -------------------------------------------------------------------------------
    async def copy_backlog(
        self, source: str, target: str, selection: Selection, from_offset: int, max_bytes: int = 0
    ) -> int:
        return (await self.copy(source, target, selection, from_offset, max_bytes)).next_offset

    async def copy(
        self, source: str, target: str, selection: Selection, from_offset: int, max_bytes: int = 0
    ) -> Copied:
        chunks: list[Any] = []
        next_offset = from_offset
        exported = self.admin(source).export_backlog(
            list(selection.slots), list(selection.keys), from_offset, max_bytes=max_bytes
        )
        async for chunk in _guard_stream(exported, source):
            chunks.append(chunk)
            next_offset = chunk.next_offset
        if not chunks:
            return Copied(next_offset, 0)
        result = await _guard(self.admin(target).import_backlog(chunks), target)
        size = sum(map(chunk_bytes, chunks))
        return Copied(next_offset, int(result.imported) + int(result.skipped), size)

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
        fenced = await _guard(
            self.admin(source).fence(
                lease_id,
                selection.slots,
                selection.keys,
                ttl_ms=round(ttl_s * 1000),
                from_offset=from_offset,
                settle_ms=round(settle_s * 1000),
                retry_after_ms=_PAUSE_RETRY_AFTER_MS,
            ),
            source,
        )
        imported = await _guard(self.admin(target).import_fenced(fenced), target)
        return Fenced(
            fenced.inflight,
            fenced.high_offset,
            imported.imported,
            fenced.renewed,
            fenced.expires_at_ms,
            chunk_bytes(fenced.delta),
            int(fenced.settled_ms),
        )

    async def connect(self, endpoints: Iterable[str], timeout_s: float) -> None:
        ready = [self.admin(endpoint).channel.channel_ready() for endpoint in endpoints]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*ready), timeout_s)

    async def unfence(self, source: str, lease_id: str) -> bool:
        return await _guard(self.admin(source).unfence(lease_id), source)

    async def discard(self, target: str, selection: Selection) -> int:
        return await _guard(self.admin(target).discard(selection.slots, selection.keys), target)

    async def switch_source(
        self, source: str, target: str, table: RoutingTable, selection: Selection, from_offset: int
    ) -> bool:
        answer = await _guard(self.admin(source).switch(table), source)
        lapsed = set(answer.unfenced_slots) & set(selection.slots) or set(answer.unfenced_keys) & set(
            selection.keys
        )
        if not lapsed:
            return False
        # The lease lapsed before this switch: the source may have served (stored, delivered, acked)
        # the selection after the fence's export. It no longer owns it, so copy that tail again.
        await self.copy_backlog(source, target, selection, from_offset)
        state = await _guard(self.admin(source).export_group_state(selection.slots, selection.keys), source)
        await _guard(self.admin(target).import_group_state(state), target)
        return True

    async def update_routing(self, endpoint: str, table: RoutingTable) -> None:
        await _guard(self.admin(endpoint).update_routing(table), endpoint)

    async def release(self, endpoint: str, selection: Selection) -> None:
        await _guard(self.admin(endpoint).release(selection.slots, selection.keys), endpoint)
