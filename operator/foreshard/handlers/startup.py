"""Operator-wide kopf settings, and the peering object replicas elect their active one through."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import kopf

from foreshard.adapters.brokers import GrpcBrokers, resolver
from foreshard.adapters.kube import KubeAdapter
from foreshard.adapters.peering import ensure_peering
from foreshard.api.migration import Migration
from foreshard.core.migration.machine import Result
from foreshard.handlers.shardallocation import RESYNC_SECONDS
from foreshard.reconcile.shardallocation import Ports

# kopf's default is 60 s; a standby takes over about this long after the active replica dies.
PEERING_LIFETIME_S = int(os.environ.get("FORESHARD_PEERING_LIFETIME_SECONDS", "20"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    settings.posting.level = 20  # INFO and above become Kubernetes Events
    settings.watching.server_timeout = 270
    settings.persistence.finalizer = "foreshard.io/finalizer"
    # kopf keeps its finalizer on a queue being deleted until the resync timers stop; a timer in
    # the middle of a pass is re-checked only every cancellation_polling seconds (default 60), so
    # `kubectl delete shalloc` waited a minute whenever a pass ran. A pass takes seconds at most.
    settings.background.cancellation_polling = 1
    settings.background.instant_exit_timeout = 5
    namespaces = list(memo.get("namespaces", []))
    # Watching named namespaces needs no cluster-scoped reads: without scanning, kopf neither
    # lists namespaces nor watches CRDs, so a namespaced install needs no ClusterRole at all.
    settings.scanning.disabled = bool(namespaces)
    token_file = memo.get("admin_token_file")
    # the last result of each move's action outlives a pass (the next step observes it), not the process
    results: dict[str, Result] = {}
    # and the moves that ended lately, per queue, beyond the few status.migrations keeps
    finished: dict[tuple[str, str], dict[str, Migration]] = {}
    memo.ports = partial(
        build_ports,
        resolver(memo.get("broker_endpoints", "dns")),
        Path(token_file) if token_file else None,
        results,
        finished,
    )
    if token_file is None or not Path(token_file).exists():
        logger.warning("no broker admin token (%s): brokers will refuse routing pushes", token_file)
    if settings.peering.standalone:
        return
    settings.peering.lifetime = PEERING_LIFETIME_S
    created = ensure_peering(settings.peering.name, namespaces)
    logger.info(
        "peering %r with priority %d (lifetime %d s)%s",
        settings.peering.name,
        settings.peering.priority,
        settings.peering.lifetime,
        f"; created in {', '.join(created)}" if created else "",
    )


def build_ports(
    endpoints: Any,
    token_file: Path | None,
    results: dict[str, Result],
    finished: dict[tuple[str, str], dict[str, Migration]],
) -> Ports:
    """A pass's ports; the token file is re-read each pass, so a rotated Secret needs no restart."""
    brokers = GrpcBrokers.from_token_file(token_file)
    return Ports(
        KubeAdapter(),
        endpoints,
        brokers,
        movers=brokers,
        results=results,
        finished=finished,
        pass_interval_s=RESYNC_SECONDS,
    )
