"""Client-side view of broker failures, parsed from gRPC status and the `foreshard-error-bin` trailer."""

from __future__ import annotations

from typing import Any

import grpc

from foreshard_broker.wire import ERROR_TRAILER, pb


class BrokerCallError(Exception):
    """A failed broker call: gRPC code, the broker's sentence, and the parsed ErrorDetail if any."""

    def __init__(self, code: grpc.StatusCode, message: str, detail: Any = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.detail = detail


class MovedError(BrokerCallError):
    """The slot or key belongs to `moved.owner_shard` at `moved.epoch`; resend there."""

    @property
    def moved(self) -> Any:
        return self.detail.moved


class PausedError(BrokerCallError):
    """The slot or key is paused; retry after `paused.retry_after_ms`."""

    @property
    def paused(self) -> Any:
        return self.detail.paused


class StaleEpochError(BrokerCallError):
    @property
    def stale_epoch(self) -> Any:
        return self.detail.stale_epoch


def error_detail(error: grpc.aio.AioRpcError) -> Any | None:
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == ERROR_TRAILER and isinstance(value, bytes):
            return pb.ErrorDetail.FromString(value)
    return None


def from_rpc_error(error: grpc.aio.AioRpcError) -> BrokerCallError:
    detail = error_detail(error)
    kind = detail.WhichOneof("kind") if detail is not None else None
    cls = {"moved": MovedError, "paused": PausedError, "stale_epoch": StaleEpochError}.get(
        kind or "", BrokerCallError
    )
    return cls(error.code(), error.details() or "", detail)
