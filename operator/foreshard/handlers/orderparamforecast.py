"""kopf registration of the forecast loop (one timer per ShardAllocation) and of OPF intake; thin."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import kopf

from foreshard.adapters.fitprocess import FitProcess
from foreshard.adapters.kube import ForecastAdapter
from foreshard.api.names import GROUP, ORDER_PARAM_FORECASTS, SHARD_ALLOCATIONS, VERSION
from foreshard.core.forecasting import tracking
from foreshard.reconcile import forecasts

FORECAST_SECONDS = float(os.environ.get("FORESHARD_FORECAST_SECONDS", "30"))
TRACKED_KEYS = int(os.environ.get("FORESHARD_TRACKED_KEYS", str(tracking.MAX_TRACKED)))
FITS = FitProcess()  # every queue's fits, in one child process (started at the first cycle)


@kopf.timer(GROUP, VERSION, SHARD_ALLOCATIONS, interval=FORECAST_SECONDS, sharp=False, id="forecast-cycle")
async def forecast_cycle(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    queue_memo = memo.setdefault("forecasts", forecasts.QueueMemo())
    # reads and writes off the event loop; the fits themselves in the child process (not the GIL)
    result = await asyncio.to_thread(
        forecasts.cycle,
        dict(body),
        ForecastAdapter(),
        queue_memo,
        time.time(),
        forecasts.connect_briefly,
        TRACKED_KEYS,
        FITS,
    )
    if result.decisions:
        patch.status["consumerGroups"] = [d.to_status() for d in result.decisions]
    if result.learnt is not None:
        patch.status["learntCapacity"] = result.learnt.to_status()
    logger.debug(
        "forecast cycle of %s: %d fits, %d created, %d deleted, %.2fs",
        body["metadata"]["name"],
        result.fits,
        len(result.create),
        len(result.delete),
        result.timings.get("total_s", 0.0),
    )


@kopf.on.delete(GROUP, VERSION, SHARD_ALLOCATIONS, optional=True, id="forecast-forget")
def forget(body: kopf.Body, **_: Any) -> None:
    # its OPFs go with it (ownerReferences); the published demand must not outlive it either
    forecasts.BOARD.pop((body["metadata"]["namespace"], body["metadata"]["name"]), None)


@kopf.on.create(GROUP, VERSION, ORDER_PARAM_FORECASTS, id="forecast-intake")
def intake(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Say at once whether the queue exists; the queue's forecast cycle fills in the forecast."""
    status = forecasts.intake_status(dict(body), ForecastAdapter().queue_exists, time.time())
    if status is not None:
        patch.status.update(status)


@kopf.on.cleanup(id="forecast-fits-stop")
def stop_fits(**_: Any) -> None:
    FITS.close()
