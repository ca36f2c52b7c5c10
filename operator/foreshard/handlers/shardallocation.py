"""kopf registration for ShardAllocation: thin, all logic lives in reconcile/ and core/."""

from __future__ import annotations

import os
import time
from typing import Any

import kopf

from foreshard.adapters.kube import KubeAdapter
from foreshard.adapters.metrics import RECONCILES
from foreshard.api.names import GROUP, SHARD_ALLOCATIONS, VERSION
from foreshard.reconcile.shardallocation import reconcile

RESYNC_SECONDS = float(os.environ.get("FORESHARD_RESYNC_SECONDS", "10"))


def _pass(body: kopf.Body, patch: kopf.Patch, logger: Any) -> None:
    name = body["metadata"]["name"]
    try:
        outcome = reconcile(dict(body), KubeAdapter(), time.time())
    except Exception:
        RECONCILES.labels(name, "error").inc()
        raise
    RECONCILES.labels(name, "ok").inc()
    patch.status.update(outcome.status)
    if outcome.scaled_from is not None:
        desired = outcome.status["shards"]["desired"]
        message = outcome.event or f"Shards {outcome.scaled_from} -> {desired}."
        kopf.info(body, reason="Scaled", message=message)
        logger.info("scaled %s from %d to %d shards", name, outcome.scaled_from, desired)


@kopf.on.resume(GROUP, VERSION, SHARD_ALLOCATIONS)
def on_resume(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    _pass(body, patch, logger)


@kopf.on.create(GROUP, VERSION, SHARD_ALLOCATIONS)
def on_create(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    _pass(body, patch, logger)


@kopf.on.update(GROUP, VERSION, SHARD_ALLOCATIONS, field="spec")
def on_update(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    _pass(body, patch, logger)


@kopf.timer(GROUP, VERSION, SHARD_ALLOCATIONS, interval=RESYNC_SECONDS, sharp=False)
def resync(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    _pass(body, patch, logger)
