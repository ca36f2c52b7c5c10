"""Register the servicers with request decoding done here, so malformed protobuf is INVALID_ARGUMENT.

The generated `add_*Servicer_to_server` functions let grpc-python decode requests, and a decoding
failure then surfaces as UNKNOWN before any broker code runs. Registering raw-bytes handlers and
decoding in a wrapper gives the client a clear INVALID_ARGUMENT naming the expected message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from foreshard_broker.wire import pb

Context = grpc.aio.ServicerContext[Any, Any]
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


def _handler(method: Any, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
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


def add_service(server: grpc.aio.Server, name: str, servicer: Any) -> None:
    """Register every method of service `name` (e.g. "Broker") implemented by `servicer`."""
    service = pb.DESCRIPTOR.services_by_name[name]
    handlers = {method.name: _handler(method, getattr(servicer, method.name)) for method in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
