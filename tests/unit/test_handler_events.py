"""The ShardAllocation handler posts each Event of a pass once, through kopf's real posting queue.

kopf before 1.45 (pyproject allows 1.37) also posts every INFO record of its per-object logger as
an Event (reason `Logging`); kopf 1.45 does so with `settings.posting.loggers`. The handler used to
log each Event there as well, so `Scaled` reached the API server twice. The test turns that
posting on, as the older kopf had it, and counts what kopf queues.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting

from foreshard.adapters.brokers import AnnotationEndpoints
from foreshard.adapters.kube import ShardPod
from foreshard.api.names import ANNOTATION_BROKER_ENDPOINT
from foreshard.core.queue_status import Observed
from foreshard.core.routing import PushFailure
from foreshard.handlers.shardallocation import on_create
from foreshard.reconcile.shardallocation import Ports
from foreshard_broker.routing import RoutingTable

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "apiVersion": "foreshard.io/v1alpha1",
    "kind": "ShardAllocation",
    "metadata": {"name": "orders", "namespace": "shop", "uid": "u-events", "generation": 1},
    "spec": {"minShards": 2, "maxShards": 8, "slots": 64},
}


class Cluster:
    """The API server as one pass sees it: the queue, its StatefulSet and two ready pods."""

    def __init__(self) -> None:
        self.replicas = 0

    def apply(self, manifest: dict[str, Any]) -> None:
        if manifest["kind"] == "StatefulSet":
            self.replicas = int(manifest["spec"]["replicas"])

    def observe_stateful_set(self, namespace: str, name: str) -> Observed:
        return Observed(self.replicas, self.replicas)

    def shard_pods(self, namespace: str, queue: str) -> list[ShardPod]:
        endpoint = {ANNOTATION_BROKER_ENDPOINT: "10.0.0.1:7000"}
        return [ShardPod(f"{queue}-shard-{i}", namespace, i, endpoint, True, False) for i in range(2)]

    def shard_allocation(self, namespace: str, name: str) -> dict[str, Any] | None:
        return BODY


class Brokers:
    def epochs(self, endpoints: dict[int, str]) -> dict[int, int | None]:
        return dict.fromkeys(endpoints, 0)

    def push(self, table: RoutingTable, shards: list[int]) -> dict[int, PushFailure]:
        return {}


async def posted_by_one_pass() -> list[tuple[str, str]]:
    settings = kopf.OperatorSettings()
    settings.posting.loggers = True  # what kopf < 1.45 always did with the object logger
    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    posting.event_queue_var.set(queue)
    posting.settings_var.set(settings)
    body = kopf.Body(BODY)
    memo = kopf.Memo(ports=lambda: Ports(Cluster(), AnnotationEndpoints(), Brokers()))
    logger = kopf.ObjectLogger(body=body, settings=settings)
    # kopf runs sync handlers in a thread; the context (the posting queue) goes with it
    await asyncio.to_thread(on_create, body=body, patch=kopf.Patch(), memo=memo, logger=logger)
    await asyncio.sleep(0)  # the thread's call_soon_threadsafe puts land on this loop
    events = []
    while not queue.empty():
        event = queue.get_nowait()
        events.append((event.reason, event.message))
    return events


def test_a_pass_posts_each_of_its_events_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kopf.objects")  # as `kopf run` configures it
    events = asyncio.run(posted_by_one_pass())
    reasons = [reason for reason, _ in events]
    assert reasons.count("Scaled") == 1, events
    assert "Logging" not in reasons, events  # no copy of an Event through the object logger
    assert ("Scaled", "Shards 0 -> 2. minShards.") in events
