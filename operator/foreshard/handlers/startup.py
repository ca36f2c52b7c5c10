"""Operator-wide kopf settings."""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # One operator replica per cluster (the Deployment runs one); no peering objects needed.
    settings.peering.standalone = True
    settings.posting.level = 20  # INFO and above become Kubernetes Events
    settings.watching.server_timeout = 270
    settings.persistence.finalizer = "foreshard.io/finalizer"
