"""gRPC servicers: protobuf <-> domain translation, and domain errors -> gRPC status from ONE table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from foreshard_broker.server import errors
from foreshard_broker.server.broker import Broker
from foreshard_broker.server.config import Batch
from foreshard_broker.storage.base import NO_HEADERS, StorageError
from foreshard_broker.wire import ERROR_TRAILER, pb, pb_grpc, routing_to_pb

T = TypeVar("T")

# The one mapping of domain errors to gRPC codes (documented in docs/broker.md).
STATUS: dict[type[errors.BrokerError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Draining: grpc.StatusCode.UNAVAILABLE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Moved: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Paused: grpc.StatusCode.UNAVAILABLE,
    errors.StaleEpoch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SequenceRefused: grpc.StatusCode.FAILED_PRECONDITION,
}


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def add_message(messages: Any, m: Any, **extra: Any) -> None:
    """Append stored message `m` to a repeated wire Message field (fetch replies, backlog chunks)."""
    messages.add(
        offset=m.offset,
        key=m.key,
        slot=m.slot,
        payload=m.payload,
        headers=m.headers,
        publish_time_ms=m.publish_time_ms,
        **extra,
    )


def status_of(error: errors.BrokerError) -> grpc.StatusCode:
    return STATUS.get(type(error), grpc.StatusCode.INTERNAL)


def detail_of(error: errors.BrokerError) -> Any | None:
    """The ErrorDetail a client parses from the `foreshard-error-bin` trailer, if the error has one."""
    if isinstance(error, errors.Moved):
        return pb.ErrorDetail(moved=moved_pb(error))
    if isinstance(error, errors.Paused):
        return pb.ErrorDetail(paused=paused_pb(error))
    if isinstance(error, errors.StaleEpoch):
        return pb.ErrorDetail(
            stale_epoch=pb.StaleEpoch(current_epoch=error.current, offered_epoch=error.offered)
        )
    return None


def moved_pb(error: errors.Moved) -> Any:
    return pb.Moved(
        slot=error.slot,
        key=error.key,
        owner_shard=error.owner,
        owner_endpoint=error.endpoint,
        epoch=error.epoch,
    )


def paused_pb(error: errors.Paused) -> Any:
    return pb.Paused(slot=error.slot, key=error.key, retry_after_ms=error.retry_after_ms, epoch=error.epoch)


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: errors.BrokerError) -> None:
    detail = detail_of(error)
    trailer = ((ERROR_TRAILER, detail.SerializeToString()),) if detail is not None else ()
    await context.abort(status_of(error), str(error), trailing_metadata=trailer)


async def guarded(context: grpc.aio.ServicerContext[Any, Any], call: Awaitable[T]) -> T:
    """Run a handler body; translate domain errors through the table."""
    try:
        return await call
    except errors.BrokerError as error:
        await abort(context, error)
        raise AssertionError("unreachable: abort raises") from error
    except StorageError as error:  # any path that reached the log directly: never a raw UNKNOWN
        await abort(context, errors.Unavailable(f"the message log failed ({error}); nothing was stored"))
        raise AssertionError("unreachable: abort raises") from error


def batch_of(request: Any) -> Batch:
    """Columns straight from the request; headers only materialised when the batch has any."""
    keys, payloads = list(request.keys), list(request.payloads)
    if len(payloads) != len(keys):
        raise errors.InvalidInput(
            f"publish batch has {len(keys)} keys but {len(payloads)} payloads; send one each"
        )
    if not request.headers:
        return Batch(keys, payloads)
    if len(request.headers) != len(keys):
        raise errors.InvalidInput(
            f"publish batch has {len(request.headers)} header entries for {len(keys)} messages; "
            "send none or one per message"
        )
    return Batch(keys, payloads, [dict(h.entries) if h.entries else NO_HEADERS for h in request.headers])


def footprint(batch: Batch) -> int:
    """What a publish batch holds in memory, near enough for flow control: payloads plus a little
    per message. (`ByteSize()` on the request would be exact but re-walks it: ~0.4 ms per 1000.)"""
    return sum(map(len, batch.payloads)) + 64 * len(batch.keys)


class BrokerService(pb_grpc.BrokerServicer):  # type: ignore[misc]
    def __init__(self, broker: Broker, inflight_limit: int) -> None:
        self.broker = broker
        self.inflight_limit = inflight_limit

    async def publish_one(self, request: Any, batch: Batch | None = None) -> Any:
        """Store one request's batch (`batch`: its columns, when the caller already took them)."""
        response = pb.PublishResponse(sequence=request.sequence)
        try:
            if batch is None:
                batch = batch_of(request)
            stored = await self.broker.publish(
                request.producer_id, request.sequence, batch, request.producer_epoch
            )
        except errors.BrokerError as error:
            response.failure.code = status_of(error).value[0]
            response.failure.message = str(error)
            if isinstance(error, errors.SequenceRefused):
                response.failure.reason = error.reason
            return response
        response.stored.first_offset = stored.first_offset
        response.stored.count = stored.count
        response.stored.duplicate = stored.duplicate
        for index, reason in stored.refusals:
            refusal = response.refusals.add(index=index)
            if isinstance(reason, errors.Moved):
                refusal.moved.CopyFrom(moved_pb(reason))
            else:
                refusal.paused.CopyFrom(paused_pb(reason))
        return response

    async def PublishBatch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        response = await self.publish_one(request)
        if response.WhichOneof("outcome") == "failure":
            await context.abort(_CODES[response.failure.code], response.failure.message)
        return response

    async def Publish(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Pipelined: batches are stored concurrently, answered in order, memory bounded per stream."""
        window = _ByteWindow(self.inflight_limit)
        answers: asyncio.Queue[tuple[asyncio.Task[Any], int] | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(requests, window, answers))
        try:
            while (item := await answers.get()) is not None:
                task, size = item
                response = await task
                window.release(size)
                yield response
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()

    async def _read(
        self,
        requests: AsyncIterator[Any],
        window: _ByteWindow,
        answers: asyncio.Queue[tuple[asyncio.Task[Any], int] | None],
    ) -> None:
        try:
            async for request in requests:
                try:  # take the columns once: upb builds a new object on every element access
                    batch: Batch | None = batch_of(request)
                except errors.BrokerError:
                    batch = None  # publish_one answers the malformed batch with its error
                size = footprint(batch) if batch is not None else 0
                await window.acquire(size)
                answers.put_nowait((asyncio.create_task(self.publish_one(request, batch)), size))
        finally:
            answers.put_nowait(None)

    async def Fetch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        deliveries = await guarded(
            context,
            self.broker.fetch(
                request.group, request.consumer, request.max_messages, request.max_bytes, request.wait_ms
            ),
        )
        response = pb.FetchResponse()
        for delivery in deliveries:
            add_message(response.messages, delivery.message, attempt=delivery.attempt)
        return response

    async def Ack(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        acked, unknown = await guarded(context, self.broker.ack(request.group, list(request.offsets)))
        return pb.AckResponse(acked=acked, unknown=unknown)

    async def Nack(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        nacked, unknown = await guarded(
            context, _now(lambda: self.broker.nack(request.group, list(request.offsets)))
        )
        return pb.NackResponse(nacked=nacked, unknown=unknown)

    async def GetRouting(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return routing_to_pb(self.broker.routing)

    async def GetBacklog(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        broker = self.broker
        return pb.GetBacklogResponse(
            shard=broker.config.shard,
            epoch=broker.routing.epoch,
            retained_messages=broker.state.retained_count,
            retained_bytes=broker.state.retained_bytes,
        )

    async def CreateGroup(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await create_group(self.broker, request, context)


async def create_group(broker: Broker, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    """CreateGroup, the same on both services (a consumer joins a group; the operator may too)."""
    latest = request.start == pb.START_POSITION_LATEST
    created = await guarded(context, broker.create_group(request.group, latest))
    return pb.CreateGroupResponse(created=created)


async def _now(call: Callable[[], T]) -> T:
    return call()


class _ByteWindow:
    """Bytes read from one stream but not yet answered; the single reader waits while it is full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._room = asyncio.Event()

    async def acquire(self, size: int) -> None:
        # A lone oversized batch is still admitted, so it gets its INVALID_ARGUMENT answer.
        while self.used and self.used + size > self.limit:
            self._room.clear()
            await self._room.wait()
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        self._room.set()
