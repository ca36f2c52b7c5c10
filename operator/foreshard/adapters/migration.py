"""Performs the migration state machine's actions on the brokers, and observes their epochs.

Each action of `core/migration/actions.py` maps onto the SDK's admin transport (the same calls the
SDK mover makes); a broker failure becomes a `Result` the next step observes, never an exception.
Pause measurement: the performer remembers when it fenced each migration, so the Switch result
carries the whole pause (fence to the target serving). After an operator restart between the two,
only the part seen by this process is counted (recorded `pauseMs` then underestimates).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager

from foreshard.api.migration import Item
from foreshard.core.migration.actions import (
    Action,
    CopyAhead,
    Fence,
    PushRouting,
    Release,
    RollBack,
    Switch,
)
from foreshard.core.migration.machine import Result
from foreshard.core.migration.rebalance import Loads
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.transport import AdminTransport, Selection, TransportError

Endpoint = Callable[[int], str]  # shard ordinal -> "host:port" of its broker
CONNECT_TIMEOUT_S = 2.0  # a fence waits this long for its connections; a broker away fails the call


def selection(item: Item) -> Selection:
    return Selection(slots=(item.slot,)) if item.slot is not None else Selection(keys=(str(item.key),))


def failed(error: TransportError) -> Result:
    return Result(False, str(error), refused=error.refused)


class MigrationPerformer:
    def __init__(
        self,
        transport: AdminTransport,
        endpoint: Endpoint,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.clock = clock
        self._fenced_at: dict[str, float] = {}

    async def epochs(self, shards: Iterable[int]) -> dict[int, int | None]:
        """The routing epoch each shard serves; None for a shard that does not answer."""
        ordered = sorted(set(shards))
        answers = await asyncio.gather(
            *(self.transport.routing(self.endpoint(shard)) for shard in ordered), return_exceptions=True
        )
        return {
            shard: None if isinstance(answer, BaseException) else answer.epoch
            for shard, answer in zip(ordered, answers, strict=True)
        }

    async def perform(self, action: Action) -> Result:
        try:
            return await self._perform(action)
        except TransportError as error:
            return failed(error)

    async def _perform(self, action: Action) -> Result:
        t = self.transport
        if isinstance(action, CopyAhead):
            source, target = self.endpoint(action.source), self.endpoint(action.target)
            started = self.clock()
            copied = await t.copy(
                source, target, selection(action.item), action.from_offset, action.max_bytes
            )
            elapsed_ms = (self.clock() - started) * 1000
            return Result(
                True,
                copied=copied.messages,
                through=copied.next_offset,
                bytes=copied.bytes,
                elapsed_ms=elapsed_ms,
            )
        if isinstance(action, Fence):
            return await self._fence(action)
        if isinstance(action, Switch):
            return await self._switch(action)
        if isinstance(action, PushRouting):
            await asyncio.gather(
                *(t.update_routing(action.table.endpoint(s), action.table) for s in action.shards)
            )
            return Result(True)
        if isinstance(action, Release):
            await t.release(self.endpoint(action.source), selection(action.item))
            return Result(True)
        return await self._roll_back(action)

    async def _fence(self, action: Fence) -> Result:
        # the pause starts when the source grants the lease: connecting to the source and the
        # target first keeps a new pass's connection setup out of the measured pause
        ends = (self.endpoint(action.source), self.endpoint(action.target))
        await self.transport.connect(ends, CONNECT_TIMEOUT_S)
        started = self.clock()
        self._fenced_at.setdefault(action.migration_id, started)
        fenced = await self.transport.fence(
            self.endpoint(action.source),
            self.endpoint(action.target),
            selection(action.item),
            action.lease_id,
            action.ttl_s,
            action.from_offset,
            action.settle_s,
        )
        pause_ms = (self.clock() - started) * 1000
        return Result(
            True,
            copied=fenced.imported,
            through=fenced.high_offset,
            inflight=fenced.inflight,
            pause_ms=pause_ms,
            bytes=fenced.bytes,
            settled_ms=fenced.settled_ms,
        )

    async def _switch(self, action: Switch) -> Result:
        """The source first, then the target: never two shards serving the item."""
        started = self.clock()
        table = action.table
        source, target = table.endpoint(action.source), table.endpoint(action.target)
        await self.transport.switch_source(source, target, table, selection(action.item), action.from_offset)
        await self.transport.update_routing(target, table)
        fenced_at = self._fenced_at.pop(action.migration_id, started)
        return Result(True, pause_ms=(self.clock() - fenced_at) * 1000)

    async def _roll_back(self, action: RollBack) -> Result:
        self._fenced_at.pop(action.migration_id, None)
        lapsing = False
        try:
            await self.transport.unfence(self.endpoint(action.source), action.lease_id)
        except TransportError as error:
            if error.refused:
                return failed(error)
            lapsing = True  # the source is away: its lease lapses by itself
        await self.transport.discard(self.endpoint(action.target), selection(action.item))
        return Result(True, lease_lapsing=lapsing)


def endpoints_of(mapping: Mapping[int, str]) -> Endpoint:
    def endpoint(shard: int) -> str:
        try:
            return mapping[shard]
        except KeyError:
            raise TransportError(f"no endpoint known for shard {shard}") from None

    return endpoint


class Session:
    """One pass's broker side of the migrations: the performer behind deadlines, and the loads.

    A stopped broker must cost the pass seconds, not hang it: each call is bounded, and a call
    that ran out of time is a failed `Result` (every action may be performed again).
    """

    def __init__(self, transport: GrpcTransport, endpoints: Mapping[int, str], deadline_s: float) -> None:
        self.transport = transport
        self.endpoints = dict(endpoints)
        self.performer = MigrationPerformer(transport, endpoints_of(self.endpoints))
        self.deadline_s = deadline_s
        self._loads: Loads | None = None

    async def epochs(self, shards: Iterable[int]) -> dict[int, int | None]:
        wanted = list(shards)
        try:
            return await asyncio.wait_for(self.performer.epochs(wanted), self.deadline_s)
        except TimeoutError:
            return dict.fromkeys(wanted)

    async def perform(self, action: Action) -> Result:
        try:
            return await asyncio.wait_for(self.performer.perform(action), self.deadline_s)
        except TimeoutError:
            return Result(False, f"no answer within {self.deadline_s:g} s")

    async def loads(self) -> Loads:
        """Per-slot rates and retained bytes from every broker (GetLoadMetrics); the brokers that
        do not answer in time count as idle, which makes the placement fall back to uniform.
        Read once per pass: the wave's planning and status.plan's preview share the answer."""
        if self._loads is None:
            self._loads = await self._read_loads()
        return self._loads

    async def _read_loads(self) -> Loads:
        answers = await asyncio.gather(
            *(
                asyncio.wait_for(self.transport.admin(e).load_metrics(top_keys=64), self.deadline_s)
                for e in self.endpoints.values()
            ),
            return_exceptions=True,
        )
        rate: dict[int, float] = {}
        size: dict[int, float] = {}
        keys: dict[str, float] = {}
        for answer in answers:
            if isinstance(answer, BaseException):
                continue
            for slot in answer.slots:
                rate[slot.slot] = rate.get(slot.slot, 0.0) + slot.arrival_rate
                size[slot.slot] = size.get(slot.slot, 0.0) + slot.backlog_bytes
            for key in answer.keys:
                keys[key.key] = keys.get(key.key, 0.0) + key.arrival_rate
        return Loads(rate, size, keys)


@asynccontextmanager
async def session(
    token: str | None, endpoints: Mapping[int, str], deadline_s: float
) -> AsyncIterator[Session]:
    transport = GrpcTransport(admin_token=token)
    try:
        yield Session(transport, endpoints, deadline_s)
    finally:
        await transport.close()
