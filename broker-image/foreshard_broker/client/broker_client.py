"""Thin async gRPC transport for one broker: data and admin calls, nothing more.

No routing, retries or prefetching here (the client SDK builds those on top): every method is one
call; failures raise `BrokerCallError` subclasses (MovedError, PausedError, StaleEpochError) with
the parsed ErrorDetail. Publish outcomes (stored / moved / paused / failure) are returned as the
PublishResponse itself, because they are per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from foreshard_broker.client.broker_errors import from_rpc_error
from foreshard_broker.routing import RoutingTable
from foreshard_broker.wire import bearer_metadata, pb, pb_grpc, routing_from_pb, routing_to_pb

T = TypeVar("T")
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 - absent from the type stubs
OutMessage = tuple[str, bytes] | tuple[str, bytes, Mapping[str, str]]
DEFAULT_OPTIONS = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
)


def publish_request(producer_id: str, sequence: int, messages: Iterable[OutMessage], epoch: int = 0) -> Any:
    """Build a columnar PublishRequest from (key, payload[, headers]) tuples."""
    items = list(messages)
    request = pb.PublishRequest(
        producer_id=producer_id,
        sequence=sequence,
        producer_epoch=epoch,
        keys=[item[0] for item in items],
        payloads=[item[1] for item in items],
    )
    if any(len(item) == 3 and item[2] for item in items):
        request.headers.extend(pb.Headers(entries=item[2] if len(item) == 3 else {}) for item in items)
    return request


async def _call(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from error


class PublishStream:
    """One pipelined Publish stream: `send` batches, `receive` their answers in the same order."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def send(self, request: Any) -> None:
        await _call(self._call.write(request))

    async def receive(self) -> Any:
        response = await _call(self._call.read())
        if response is _EOF:
            raise EOFError("publish stream closed by the broker")
        return response

    async def close(self) -> None:
        await _call(self._call.done_writing())

    def cancel(self) -> None:
        self._call.cancel()


class _Channel:
    def __init__(self, endpoint: str, options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS) -> None:
        self.endpoint = endpoint
        self.channel = grpc.aio.insecure_channel(endpoint, options=list(options))

    async def close(self) -> None:
        await self.channel.close(None)

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout)


class BrokerClient(_Channel):
    """Data API: Publish (stream and unary), Fetch, Ack, Nack."""

    def __init__(self, endpoint: str, options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS) -> None:
        super().__init__(endpoint, options)
        self.stub = pb_grpc.BrokerStub(self.channel)

    def publish_stream(self) -> PublishStream:
        return PublishStream(self.stub.Publish())

    async def publish(
        self,
        producer_id: str,
        sequence: int,
        messages: Iterable[OutMessage],
        epoch: int = 0,
        timeout: float | None = None,
    ) -> Any:
        request = publish_request(producer_id, sequence, messages, epoch)
        return await self.publish_request(request, timeout)

    async def publish_request(self, request: Any, timeout: float | None = None) -> Any:
        return await _call(self.stub.PublishBatch(request, timeout=timeout))

    async def fetch(
        self,
        group: str,
        consumer: str,
        max_messages: int = 100,
        max_bytes: int = 0,
        wait_ms: int = 0,
        timeout: float | None = None,
    ) -> list[Any]:
        """`timeout` bounds the call beyond the broker's own `wait_ms` long poll."""
        request = pb.FetchRequest(
            group=group, consumer=consumer, max_messages=max_messages, max_bytes=max_bytes, wait_ms=wait_ms
        )
        deadline = None if timeout is None else timeout + wait_ms / 1000
        response = await _call(self.stub.Fetch(request, timeout=deadline))
        return list(response.messages)

    async def ack(self, group: str, offsets: Iterable[int], timeout: float | None = None) -> Any:
        request = pb.AckRequest(group=group, offsets=list(offsets))
        return await _call(self.stub.Ack(request, timeout=timeout))

    async def nack(self, group: str, offsets: Iterable[int], timeout: float | None = None) -> Any:
        request = pb.NackRequest(group=group, offsets=list(offsets))
        return await _call(self.stub.Nack(request, timeout=timeout))

    async def get_routing(self, timeout: float | None = None) -> RoutingTable:
        """The routing table the broker serves; needs no admin token."""
        return routing_from_pb(await _call(self.stub.GetRouting(pb.GetRoutingRequest(), timeout=timeout)))

    async def backlog(self, timeout: float | None = None) -> Any:
        """GetBacklogResponse: retained messages and bytes of this shard."""
        return await _call(self.stub.GetBacklog(pb.GetBacklogRequest(), timeout=timeout))

    async def create_group(self, group: str, latest: bool = False, timeout: float | None = None) -> bool:
        """Join (create if absent) a consumer group; needs no admin token."""
        return await _create_group(self.stub, group, latest, timeout)


async def _create_group(stub: Any, group: str, latest: bool, timeout: float | None = None) -> bool:
    start = pb.START_POSITION_LATEST if latest else pb.START_POSITION_EARLIEST
    request = pb.CreateGroupRequest(group=group, start=start)
    return bool((await _call(stub.CreateGroup(request, timeout=timeout))).created)


class _Authorized:
    """A stub whose every method sends the admin token's metadata (none when there is no token)."""

    def __init__(self, stub: Any, token: str | None) -> None:
        self._stub = stub
        self._metadata = bearer_metadata(token)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        metadata = self._metadata
        return lambda *args, **kwargs: method(*args, metadata=metadata, **kwargs)


def _selector(slots: Iterable[int] = (), keys: Iterable[str] = ()) -> Any:
    return pb.Selector(slots=list(slots), keys=list(keys))


class AdminClient(_Channel):
    """Admin API: routing, groups, fencing, backlog and group-state copy, drain, load, health."""

    def __init__(
        self, endpoint: str, options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS, token: str | None = None
    ) -> None:
        """`token`: the broker's admin token (its --admin-token-file), sent on every call as
        `authorization: Bearer <token>`; without one every call is refused (UNAUTHENTICATED)."""
        # Its own connection: a channel with the same target and options would share the data
        # channel's HTTP/2 connection, and a move's admin calls would queue behind publish frames.
        super().__init__(endpoint, [*options, ("grpc.use_local_subchannel_pool", 1)])
        self.stub = _Authorized(pb_grpc.AdminStub(self.channel), token)

    async def update_routing(self, table: RoutingTable) -> int:
        response = await _call(self.stub.UpdateRouting(routing_to_pb(table)))
        return int(response.epoch)

    async def switch(self, table: RoutingTable) -> Any:
        """UpdateRouting, answering the whole response (what the table took away unfenced)."""
        return await _call(self.stub.UpdateRouting(routing_to_pb(table)))

    async def update_routing_pb(self, table: Any) -> int:
        return int((await _call(self.stub.UpdateRouting(table))).epoch)

    async def get_routing(self) -> RoutingTable:
        return routing_from_pb(await _call(self.stub.GetRouting(pb.GetRoutingRequest())))

    async def create_group(self, group: str, latest: bool = False) -> bool:
        return await _create_group(self.stub, group, latest)

    async def delete_group(self, group: str) -> Any:
        """DeleteGroupResponse (deleted, released): the group stops holding messages."""
        return await _call(self.stub.DeleteGroup(pb.DeleteGroupRequest(group=group)))

    async def pause(
        self, slots: Iterable[int] = (), keys: Iterable[str] = (), retry_after_ms: int = 0
    ) -> Any:
        request = pb.PauseRequest(selector=_selector(slots, keys), retry_after_ms=retry_after_ms)
        return await _call(self.stub.Pause(request))

    async def resume(self, slots: Iterable[int] = (), keys: Iterable[str] = ()) -> None:
        await _call(self.stub.Resume(pb.ResumeRequest(selector=_selector(slots, keys))))

    async def export_backlog(
        self,
        slots: Iterable[int] = (),
        keys: Iterable[str] = (),
        from_offset: int = 0,
        chunk: int = 1000,
        max_bytes: int = 0,
    ) -> AsyncIterator[Any]:
        request = pb.ExportBacklogRequest(
            selector=_selector(slots, keys),
            from_offset=from_offset,
            chunk_messages=chunk,
            max_bytes=max_bytes,
        )
        try:
            async for item in self.stub.ExportBacklog(request):
                yield item
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error

    async def import_backlog(self, chunks: AsyncIterable[Any] | Iterable[Any]) -> Any:
        return await _call(self.stub.ImportBacklog(chunks))

    async def export_group_state(self, slots: Iterable[int] = (), keys: Iterable[str] = ()) -> Any:
        request = pb.ExportGroupStateRequest(selector=_selector(slots, keys))
        return await _call(self.stub.ExportGroupState(request))

    async def import_group_state(self, state: Any) -> Any:
        return await _call(self.stub.ImportGroupState(state))

    async def release(self, slots: Iterable[int] = (), keys: Iterable[str] = ()) -> int:
        response = await _call(self.stub.Release(pb.ReleaseRequest(selector=_selector(slots, keys))))
        return int(response.released)

    async def fence(
        self,
        lease_id: str,
        slots: Iterable[int] = (),
        keys: Iterable[str] = (),
        ttl_ms: int = 0,
        from_offset: int = 0,
        settle_ms: int = 0,
        retry_after_ms: int = 0,
    ) -> Any:
        """Fence under a lease and export the delta and group state (a FenceResponse)."""
        request = pb.FenceRequest(
            lease_id=lease_id,
            selector=_selector(slots, keys),
            ttl_ms=ttl_ms,
            from_offset=from_offset,
            settle_ms=settle_ms,
            retry_after_ms=retry_after_ms,
        )
        return await _call(self.stub.Fence(request))

    async def unfence(self, lease_id: str) -> bool:
        return bool((await _call(self.stub.Unfence(pb.UnfenceRequest(lease_id=lease_id)))).lifted)

    async def import_fenced(self, fenced: Any) -> Any:
        return await _call(self.stub.ImportFenced(fenced))

    async def discard(self, slots: Iterable[int] = (), keys: Iterable[str] = ()) -> int:
        response = await _call(self.stub.Discard(pb.DiscardRequest(selector=_selector(slots, keys))))
        return int(response.discarded)

    async def drain(self) -> int:
        return int((await _call(self.stub.Drain(pb.DrainRequest()))).retained)

    async def load_metrics(self, top_keys: int = 0) -> Any:
        return await _call(self.stub.GetLoadMetrics(pb.LoadMetricsRequest(top_keys=top_keys)))

    async def health(self) -> Any:
        return await _call(self.stub.Health(pb.HealthRequest()))


def chunk_bytes(chunk: Any) -> int:
    """Keys and payloads a backlog chunk carries (what a move's copy throughput counts)."""
    return sum(len(m.payload) + len(m.key) for m in chunk.messages)


async def copy_backlog(
    source: AdminClient,
    target: AdminClient,
    slots: Iterable[int],
    keys: Iterable[str],
    from_offset: int,
    max_bytes: int = 0,
) -> tuple[Any, int]:
    """Stream an export from `source` into an import on `target`; returns (result, next offset)."""
    next_offset = from_offset
    chunks: list[Any] = []
    async for chunk in source.export_backlog(list(slots), list(keys), from_offset, max_bytes=max_bytes):
        chunks.append(chunk)
        next_offset = chunk.next_offset
    result = await target.import_backlog(chunks) if chunks else pb.ImportBacklogResponse()
    return result, next_offset
