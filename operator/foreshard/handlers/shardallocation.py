"""kopf registration for ShardAllocation: thin, all logic lives in reconcile/ and core/.

kopf runs a timer beside the event handlers of the same object, so two passes could overlap and
both record a routing table; a per-object lock makes passes take turns, and each pass re-reads the
object so it starts from the status the previous pass wrote (kopf applies a handler's status
patch after it returns, and the watch may not have delivered it yet).

Only the timer drives migrations (docs/design/20261202-migration-orchestration.md): kopf never
runs one object's timer concurrently with itself, and the lock keeps the event handlers' passes
from interleaving with it; those passes refresh everything else.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import kopf

from foreshard.adapters.metrics import RECONCILES
from foreshard.api.names import GROUP, SHARD_ALLOCATIONS, VERSION
from foreshard.reconcile.shardallocation import Ports, reconcile

RESYNC_SECONDS = float(os.environ.get("FORESHARD_RESYNC_SECONDS", "10"))
# Not kopf's per-object logger: kopf before 1.45 (pyproject allows 1.37) posts every INFO record of
# that logger as an Event of its own (reason Logging), so each Scaled/Routing Event was posted twice.
log = logging.getLogger(__name__)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(uid: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


def _pass(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, migrate: bool = False) -> None:
    meta = body["metadata"]
    name = meta["name"]
    ports: Ports = memo["ports"]()
    with _lock(meta["uid"]):
        current = ports.kube.shard_allocation(meta["namespace"], name)
        if current is None or current["metadata"].get("deletionTimestamp"):
            return
        try:
            outcome = reconcile(current, ports, time.time(), drive_migrations=migrate)
        except Exception:
            RECONCILES.labels(meta["namespace"], name, "error").inc()
            raise
    RECONCILES.labels(meta["namespace"], name, "ok").inc()
    patch.status.update(outcome.status)
    for event in outcome.events:
        post = kopf.warn if event.warning else kopf.info
        post(body, reason=event.reason, message=event.message)
        log.info("%s/%s %s: %s", meta["namespace"], name, event.reason, event.message)


@kopf.on.resume(GROUP, VERSION, SHARD_ALLOCATIONS)
def on_resume(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    _pass(body, patch, memo)


@kopf.on.create(GROUP, VERSION, SHARD_ALLOCATIONS)
def on_create(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    _pass(body, patch, memo)


@kopf.on.update(GROUP, VERSION, SHARD_ALLOCATIONS, field="spec")
def on_update(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    _pass(body, patch, memo)


@kopf.timer(GROUP, VERSION, SHARD_ALLOCATIONS, interval=RESYNC_SECONDS, sharp=False)
def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    _pass(body, patch, memo, migrate=True)
