"""Operator-wide kopf settings, and the peering object replicas elect their active one through."""

from __future__ import annotations

import os
from typing import Any

import kopf

from foreshard.adapters.peering import ensure_peering

# kopf's default is 60 s; a standby takes over about this long after the active replica dies.
PEERING_LIFETIME_S = int(os.environ.get("FORESHARD_PEERING_LIFETIME_SECONDS", "20"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    settings.posting.level = 20  # INFO and above become Kubernetes Events
    settings.watching.server_timeout = 270
    settings.persistence.finalizer = "foreshard.io/finalizer"
    namespaces = list(memo.get("namespaces", []))
    # Watching named namespaces needs no cluster-scoped reads: without scanning, kopf neither
    # lists namespaces nor watches CRDs, so a namespaced install needs no ClusterRole at all.
    settings.scanning.disabled = bool(namespaces)
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
