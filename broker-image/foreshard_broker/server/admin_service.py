"""gRPC Admin servicer: protobuf <-> admin operations; errors go through `service.STATUS`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from foreshard_broker.idempotence import UNKNOWN, ProducerHistory, SentBatch
from foreshard_broker.server import errors
from foreshard_broker.server.admin import Admin, GroupPending, ProducerSeen, Selector
from foreshard_broker.server.load import ProcessStats
from foreshard_broker.server.service import abort, add_message, create_group, guarded
from foreshard_broker.storage import Message
from foreshard_broker.wire import pb, pb_grpc, routing_from_pb, routing_to_pb

Context = grpc.aio.ServicerContext[Any, Any]


def message_of(m: Any) -> Message:
    return Message(m.offset, m.key, m.slot, m.payload, dict(m.headers), m.publish_time_ms)


class AdminService(pb_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.broker = admin.broker
        self.process = ProcessStats()

    def _selector(self, request: Any) -> Selector:
        return self.admin.selector(request.slots, request.keys)

    def _chunk(self, chunk: Any, sources: set[int]) -> tuple[Selector, list[Message]]:
        self.admin.check_source(chunk.source_shard)
        if len(sources) > 1:
            raise errors.InvalidInput(f"one import comes from one shard; chunks name {sorted(sources)}")
        if not chunk.HasField("selector"):
            raise errors.InvalidInput(
                "backlog chunk has no selector; send ExportBacklog's chunks as they are"
            )
        return self._selector(chunk.selector), [message_of(m) for m in chunk.messages]

    async def UpdateRouting(self, request: Any, context: Context) -> Any:
        table = await guarded(context, _call(lambda: routing_from_pb(request)))
        switched = await guarded(context, self.admin.update_routing(table))
        return pb.UpdateRoutingResponse(
            epoch=switched.epoch,
            unfenced_slots=switched.unfenced_slots,
            unfenced_keys=switched.unfenced_keys,
        )

    async def GetRouting(self, request: Any, context: Context) -> Any:
        return routing_to_pb(self.broker.routing)

    async def CreateGroup(self, request: Any, context: Context) -> Any:
        return await create_group(self.broker, request, context)

    async def DeleteGroup(self, request: Any, context: Context) -> Any:
        deleted, released = await guarded(context, self.broker.delete_group(request.group))
        return pb.DeleteGroupResponse(deleted=deleted, released=released)

    async def Pause(self, request: Any, context: Context) -> Any:
        selector = await guarded(context, _call(lambda: self._selector(request.selector)))
        inflight, high = await guarded(context, self.admin.pause(selector, request.retry_after_ms))
        return pb.PauseResponse(inflight=inflight, high_offset=high)

    async def Resume(self, request: Any, context: Context) -> Any:
        selector = await guarded(context, _call(lambda: self._selector(request.selector)))
        self.admin.resume(selector)
        return pb.ResumeResponse()

    async def ExportBacklog(self, request: Any, context: Context) -> AsyncIterator[Any]:
        selector = await guarded(context, _call(lambda: self._selector(request.selector)))
        chunks = self.admin.export_backlog(
            selector, request.from_offset, request.chunk_messages, request.max_bytes
        )
        async for chunk in chunks:
            yield backlog_chunk(self.broker.config.shard, request.selector, chunk, chunk[-1].offset + 1)

    async def ImportBacklog(self, requests: AsyncIterator[Any], context: Context) -> Any:
        """Reads the whole stream first (an export is already held in memory by its sender), so
        a bad chunk anywhere is refused before anything is imported."""
        chunks: list[tuple[Selector, list[Message]]] = []
        sources: set[int] = set()
        async for chunk in requests:
            sources.add(chunk.source_shard)
            chunks.append(await guarded(context, _call(lambda c=chunk: self._chunk(c, sources))))
        if not chunks:
            return pb.ImportBacklogResponse()
        imported, skipped = await guarded(context, self.admin.import_backlog(sources.pop(), chunks))
        return pb.ImportBacklogResponse(imported=imported, skipped=skipped)

    async def Fence(self, request: Any, context: Context) -> Any:
        selector = await guarded(context, _call(lambda: self._selector(request.selector)))
        fenced = await guarded(
            context,
            self.admin.fence(
                request.lease_id,
                selector,
                request.ttl_ms,
                request.from_offset,
                request.settle_ms,
                request.retry_after_ms,
            ),
        )
        shard = self.broker.config.shard
        return pb.FenceResponse(
            expires_at_ms=fenced.lease.expires_at_ms,
            renewed=fenced.renewed,
            inflight=fenced.inflight,
            high_offset=fenced.high_offset,
            delta=backlog_chunk(shard, request.selector, fenced.delta, fenced.high_offset),
            group_state=group_state_pb(shard, request.selector, fenced.groups, fenced.producers),
            settled_ms=fenced.settled_ms,
            fenced_since_ms=fenced.lease.granted_at_ms,
        )

    async def Unfence(self, request: Any, context: Context) -> Any:
        return pb.UnfenceResponse(lifted=await guarded(context, self.admin.unfence(request.lease_id)))

    async def ImportFenced(self, request: Any, context: Context) -> Any:
        source = request.group_state.source_shard
        if request.delta.source_shard != source or source == self.broker.config.shard:
            await abort(context, errors.InvalidInput("ImportFenced takes a Fence answer from another shard"))
        selector = await guarded(context, _call(lambda: self._selector(request.group_state.selector)))
        groups = [GroupPending(g.group, list(g.pending_offsets)) for g in request.group_state.groups]
        producers = [ProducerSeen(p.producer_id, history_of(p)) for p in request.group_state.producers]
        delta = [message_of(m) for m in request.delta.messages]
        imported, skipped, acked = await guarded(
            context, self.admin.import_fenced(source, selector, delta, groups, producers)
        )
        return pb.ImportFencedResponse(imported=imported, skipped=skipped, acked=acked)

    async def Discard(self, request: Any, context: Context) -> Any:
        selector = await guarded(context, _call(lambda: self._selector(request.selector)))
        return pb.DiscardResponse(discarded=await guarded(context, self.admin.discard(selector)))

    async def ExportGroupState(self, request: Any, context: Context) -> Any:
        selector = await guarded(context, _call(lambda: self._selector(request.selector)))
        groups = self.admin.export_group_state(selector)
        return group_state_pb(
            self.broker.config.shard, request.selector, groups, self.admin.export_producers()
        )

    async def ImportGroupState(self, request: Any, context: Context) -> Any:
        selector = await guarded(context, _call(lambda: self._selector(request.selector)))
        groups = [GroupPending(g.group, list(g.pending_offsets)) for g in request.groups]
        if request.source_shard == self.broker.config.shard:
            await abort(context, errors.InvalidInput("source_shard is this shard; import from another shard"))
        producers = [ProducerSeen(p.producer_id, history_of(p)) for p in request.producers]
        acked = await guarded(
            context, self.admin.import_group_state(request.source_shard, selector, groups, producers)
        )
        return pb.ImportGroupStateResponse(groups=len(groups), acked=acked)

    async def Release(self, request: Any, context: Context) -> Any:
        selector = await guarded(context, _call(lambda: self._selector(request.selector)))
        released = await guarded(context, self.admin.release(selector))
        return pb.ReleaseResponse(released=released)

    async def Drain(self, request: Any, context: Context) -> Any:
        return pb.DrainResponse(retained=await self.admin.drain())

    async def GetLoadMetrics(self, request: Any, context: Context) -> Any:
        return load_metrics_pb(self, request.top_keys)

    async def Health(self, request: Any, context: Context) -> Any:
        broker = self.broker
        return pb.HealthResponse(
            shard=broker.config.shard,
            epoch=broker.routing.epoch,
            ready=broker.failed is None and not broker.draining,
            draining=broker.draining,
            high_offset=broker.state.next_offset,
        )


def backlog_chunk(shard: int, selector: Any, messages: list[Message], next_offset: int) -> Any:
    out = pb.BacklogChunk(source_shard=shard, next_offset=next_offset, selector=selector)
    for m in messages:
        add_message(out.messages, m)
    return out


def group_state_pb(
    shard: int, selector: Any, groups: list[GroupPending], producers: list[ProducerSeen]
) -> Any:
    return pb.ExportGroupStateResponse(
        source_shard=shard,
        selector=selector,
        groups=[pb.GroupState(group=g.group, pending_offsets=g.pending_offsets) for g in groups],
        producers=[producer_pb(p.producer_id, p.history) for p in producers],
    )


def producer_pb(producer: str, history: ProducerHistory) -> Any:
    last = history.batches[-1]
    return pb.ProducerState(
        producer_id=producer,
        sequence=last.sequence,
        refused=last.refused,
        epoch=history.epoch,
        recent=[
            pb.ProducerBatch(
                sequence=b.sequence, size=b.size, payload_bytes=b.payload_bytes, refused=b.refused
            )
            for b in history.batches
        ],
    )


def history_of(state: Any) -> ProducerHistory:
    """An imported ProducerState; one without `recent` (an older exporter) is its last batch."""
    recent = [SentBatch(b.sequence, 0, b.size, b.payload_bytes, tuple(b.refused)) for b in state.recent]
    return ProducerHistory(
        state.epoch, recent or [SentBatch(state.sequence, 0, UNKNOWN, UNKNOWN, tuple(state.refused))]
    )


def load_metrics_pb(service: AdminService, top_keys: int) -> Any:
    broker, state = service.broker, service.broker.state
    window, keys, slots = broker.load.rates(time.monotonic(), top=top_keys)
    keys.sort(key=lambda r: r.arrival_rate, reverse=True)
    out = pb.LoadMetrics(shard=broker.config.shard, epoch=broker.routing.epoch, window_seconds=window)
    for r in keys:
        backlog, backlog_bytes = state.backlog(r.key)
        out.keys.add(
            key=r.key, slot=r.slot, arrival_rate=r.arrival_rate, ack_rate=r.ack_rate, backlog=backlog,
            backlog_bytes=backlog_bytes, arrived_total=r.arrived, arrived_bytes_total=r.arrived_bytes,
        )  # fmt: skip
    held = broker.load.slot_backlog()
    for s in slots:  # every slot with arrivals or acks; folded keys count in their slot
        backlog, backlog_bytes = held.get(s.slot, (0, 0))
        out.slots.add(
            slot=s.slot, arrival_rate=s.arrival_rate, ack_rate=s.ack_rate, backlog=backlog,
            backlog_bytes=backlog_bytes, arrived_total=s.arrived, arrived_bytes_total=s.arrived_bytes,
        )  # fmt: skip
    cpu_seconds, cpu_percent, rss = service.process.sample()
    out.process_cpu_seconds, out.process_cpu_percent, out.process_rss_bytes = cpu_seconds, cpu_percent, rss
    out.retained_messages = state.retained_count
    out.retained_bytes = state.retained_bytes
    return out


async def _call(function: Any) -> Any:
    return function()
