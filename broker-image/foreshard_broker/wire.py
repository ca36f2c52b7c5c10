"""The generated protobuf modules, typed as Any.

The generated code is committed and excluded from type checking; importing it through importlib
keeps mypy from analysing it while every other module stays strictly typed.
"""

from __future__ import annotations

import importlib
from typing import Any

from foreshard_broker.routing import RoutingTable

pb: Any = importlib.import_module("foreshard_broker.proto.broker_pb2")
pb_grpc: Any = importlib.import_module("foreshard_broker.proto.broker_pb2_grpc")

ERROR_TRAILER = "foreshard-error-bin"
"""Trailing-metadata key holding a serialized ErrorDetail on failed calls."""

DRAINING = "SHARD_DRAINING"
"""How a draining broker's refusal starts (`DRAINING: ...`): nothing of the call was stored, so a
client may send it elsewhere (the SDK producer does when the routing table moved its keys)."""

ADMIN_AUTH_METADATA = "authorization"
"""Call-metadata key of the admin token: `authorization: Bearer <token>` on every Admin call."""


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The metadata an Admin call carries for `token` (None: no token, the call will be refused)."""
    return ((ADMIN_AUTH_METADATA, f"Bearer {token}"),) if token else None


def routing_to_pb(table: RoutingTable) -> Any:
    """A RoutingTable as its wire message (the server's answers, the operator's pushes)."""
    return pb.RoutingTable(
        epoch=table.epoch,
        num_slots=table.num_slots,
        slot_owners=table.slot_owners,
        pinned=dict(table.pinned),
        endpoints=dict(table.endpoints),
    )


def routing_from_pb(message: Any) -> RoutingTable:
    """The wire message as a RoutingTable (not validated: the broker validates what it is pushed)."""
    return RoutingTable(
        message.epoch,
        message.num_slots,
        tuple(message.slot_owners),
        dict(message.pinned),
        dict(message.endpoints),
    )
