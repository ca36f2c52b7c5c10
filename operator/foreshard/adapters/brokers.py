"""The operator's arrow to the brokers: where each shard's broker is, and its Admin API.

    EndpointResolver  shard pods -> {ordinal: "host:port"}
        DnsEndpoints          <pod>.<headless service>.<namespace>.svc:7000 (a real cluster)
        AnnotationEndpoints   the pod's foreshard.io/broker-endpoint (the local pod runner's)
    GrpcBrokers       epochs (data API GetRouting) and routing pushes (Admin UpdateRouting, token);
                      a migration session (adapters/migration.py: moves and GetLoadMetrics)

Every broker call has a deadline: a stopped or partitioned broker costs a pass seconds, never
the pass itself; the timer is the retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol, TypeVar

from foreshard.adapters import migration
from foreshard.adapters.kube import ShardPod
from foreshard.api.names import ANNOTATION_BROKER_ENDPOINT, BROKER_GRPC_PORT
from foreshard.core.routing import PushFailure
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.transport import TransportError
from foreshard_broker.routing import RoutingTable

DEADLINE_S = 3.0
MOVE_DEADLINE_S = 10.0
T = TypeVar("T")


class EndpointResolver(Protocol):
    def endpoints(self, service: str, pods: Sequence[ShardPod]) -> dict[int, str]: ...


class DnsEndpoints:
    """Stable per-pod DNS of the headless Service (publishNotReadyAddresses: a broker is reachable
    for routing before it is ready, which it becomes only once it has a table)."""

    def endpoints(self, service: str, pods: Sequence[ShardPod]) -> dict[int, str]:
        return {
            p.ordinal: f"{p.name}.{service}.{p.namespace}.svc:{BROKER_GRPC_PORT}" for p in pods if p.scheduled
        }


class AnnotationEndpoints:
    """What the pod itself says (the local cluster has no DNS; its runner annotates each pod)."""

    def endpoints(self, service: str, pods: Sequence[ShardPod]) -> dict[int, str]:
        found = {p.ordinal: p.annotations.get(ANNOTATION_BROKER_ENDPOINT, "") for p in pods}
        return {ordinal: endpoint for ordinal, endpoint in found.items() if endpoint}


RESOLVERS: dict[str, type[DnsEndpoints] | type[AnnotationEndpoints]] = {
    "dns": DnsEndpoints,
    "annotation": AnnotationEndpoints,
}


def resolver(kind: str) -> EndpointResolver:
    try:
        return RESOLVERS[kind]()
    except KeyError:
        raise ValueError(f"--broker-endpoints must be one of {sorted(RESOLVERS)}, got {kind!r}") from None


class BrokerAdmin(Protocol):
    def epochs(self, endpoints: Mapping[int, str]) -> dict[int, int | None]:
        """The epoch each broker serves; None for one that does not answer in time."""
        ...

    def push(self, table: RoutingTable, shards: Sequence[int]) -> dict[int, PushFailure]:
        """UpdateRouting(table) on `shards` (at their endpoints in the table); the failures."""
        ...


class GrpcBrokers:
    def __init__(self, token: str | None, deadline_s: float = DEADLINE_S) -> None:
        self.token = token
        self.deadline_s = deadline_s

    @classmethod
    def from_token_file(cls, path: Path | None) -> GrpcBrokers:
        # Read on every pass's construction: a rotated Secret takes effect without a restart.
        return cls(path.read_text().strip() if path is not None and path.exists() else None)

    def epochs(self, endpoints: Mapping[int, str]) -> dict[int, int | None]:
        return asyncio.run(self._epochs(endpoints))

    def push(self, table: RoutingTable, shards: Sequence[int]) -> dict[int, PushFailure]:
        if not shards:
            return {}
        if self.token is None:
            message = "the operator has no admin token (--admin-token-file); brokers refuse Admin calls"
            return {shard: PushFailure(message, refused=True) for shard in shards}
        return asyncio.run(self._push(table, shards))

    def session(self, endpoints: Mapping[int, str]) -> AbstractAsyncContextManager[migration.Session]:
        """The brokers of one pass's migrations (moves take longer than a routing call: the fence
        waits up to half the pause budget for deliveries to settle)."""
        return migration.session(self.token, endpoints, MOVE_DEADLINE_S)

    async def _epochs(self, endpoints: Mapping[int, str]) -> dict[int, int | None]:
        transport = GrpcTransport()
        try:
            ordered = sorted(endpoints)
            answers = await asyncio.gather(
                *(self._bounded(transport.routing(endpoints[s])) for s in ordered), return_exceptions=True
            )
        finally:
            await transport.close()
        return {
            shard: None if isinstance(answer, BaseException) else answer.epoch
            for shard, answer in zip(ordered, answers, strict=True)
        }

    async def _push(self, table: RoutingTable, shards: Sequence[int]) -> dict[int, PushFailure]:
        transport = GrpcTransport(admin_token=self.token)
        try:
            answers = await asyncio.gather(
                *(self._bounded(transport.update_routing(table.endpoint(s), table)) for s in shards),
                return_exceptions=True,
            )
        finally:
            await transport.close()
        failures = {}
        for shard, answer in zip(shards, answers, strict=True):
            if isinstance(answer, TransportError):
                failures[shard] = PushFailure(str(answer), answer.refused)
            elif isinstance(answer, BaseException):
                failures[shard] = PushFailure(f"{type(answer).__name__}: {answer}", refused=False)
        return failures

    async def _bounded(self, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, self.deadline_s)
        except TimeoutError:
            raise TransportError(f"no answer within {self.deadline_s:g} s") from None
