"""Register the servicers with request decoding done here, so malformed protobuf is INVALID_ARGUMENT.

The generated `add_*Servicer_to_server` functions let grpc-python decode requests, and a decoding
failure then surfaces as UNKNOWN before any broker code runs. Registering raw-bytes handlers and
decoding in a wrapper gives the client a clear INVALID_ARGUMENT naming the expected message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from foreshard_broker.wire import pb

Context = grpc.aio.ServicerContext[Any, Any]
Guard = Callable[[Context], Awaitable[None]]  # aborts the call when it may not proceed
PACKAGE = "foreshard.v1"


async def _decode(cls: Any, raw: bytes, context: Context) -> Any:
    try:
        return cls.FromString(raw)
    except DecodeError as error:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {PACKAGE}.{cls.__name__}: {error}"
        )


async def _decode_stream(cls: Any, raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
    async for raw in raws:
        yield await _decode(cls, raw, context)


def _guarded(guard: Guard, raw_handler: Callable[..., Any], streaming_out: bool) -> Callable[..., Any]:
    """`raw_handler` (it takes the undecoded request) behind `guard`: a refused caller learns only
    that it was refused, not even whether its request would have decoded."""
    if streaming_out:

        async def stream(raw: Any, context: Context) -> AsyncIterator[Any]:
            await guard(context)
            async for response in raw_handler(raw, context):
                yield response

        return stream

    async def unary(raw: Any, context: Context) -> Any:
        await guard(context)
        return await raw_handler(raw, context)

    return unary


def _handler(
    method: Any, behavior: Callable[..., Any], guard: Guard | None
) -> grpc.RpcMethodHandler[Any, Any]:
    """The data API has no guard and pays nothing for the Admin API's."""
    handler: Any = _raw_handler(method, behavior)
    if guard is None:
        return handler  # type: ignore[no-any-return]
    kind = ("stream_" if method.client_streaming else "unary_") + (
        "stream" if method.server_streaming else "unary"
    )
    guarded = _guarded(guard, getattr(handler, kind), method.server_streaming)
    return handler._replace(**{kind: guarded})  # type: ignore[no-any-return]  # a namedtuple


def _raw_handler(method: Any, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
    request_cls = getattr(pb, method.input_type.name)
    serialize = getattr(pb, method.output_type.name).SerializeToString
    streaming_in, streaming_out = method.client_streaming, method.server_streaming
    if streaming_in and streaming_out:

        async def bidi(raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
            async for response in behavior(_decode_stream(request_cls, raws, context), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(bidi, response_serializer=serialize)
    if streaming_in:

        async def client_stream(raws: AsyncIterator[bytes], context: Context) -> Any:
            return await behavior(_decode_stream(request_cls, raws, context), context)

        return grpc.stream_unary_rpc_method_handler(client_stream, response_serializer=serialize)
    if streaming_out:

        async def server_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            async for response in behavior(await _decode(request_cls, raw, context), context):
                yield response

        return grpc.unary_stream_rpc_method_handler(server_stream, response_serializer=serialize)

    async def unary(raw: bytes, context: Context) -> Any:
        return await behavior(await _decode(request_cls, raw, context), context)

    return grpc.unary_unary_rpc_method_handler(unary, response_serializer=serialize)


def add_service(server: grpc.aio.Server, name: str, servicer: Any, guard: Guard | None = None) -> None:
    """Register every method of service `name` (e.g. "Broker") implemented by `servicer`; `guard`
    (the admin token check) runs first on every call of the service."""
    service = pb.DESCRIPTOR.services_by_name[name]
    handlers = {
        method.name: _handler(method, getattr(servicer, method.name), guard) for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
