"""Kubernetes I/O for the reconciler: server-side apply of owned objects, and observation."""

from __future__ import annotations

from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from foreshard.api.names import FIELD_MANAGER
from foreshard.core.queue_status import Observed

APPLY = "application/apply-patch+yaml"


class KubePort(Protocol):
    def apply(self, manifest: dict[str, Any]) -> None: ...

    def observe_stateful_set(self, namespace: str, name: str) -> Observed: ...


class KubeAdapter:
    """The real cluster through the official client (configured by kopf's login)."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or client.ApiClient()

    def apply(self, manifest: dict[str, Any]) -> None:
        """Server-side apply: create or update, owning only the fields we set."""
        kind, meta = manifest["kind"], manifest["metadata"]
        patch = {
            "StatefulSet": client.AppsV1Api(self.api).patch_namespaced_stateful_set,
            "Service": client.CoreV1Api(self.api).patch_namespaced_service,
        }[kind]
        patch(
            meta["name"],
            meta["namespace"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )

    def observe_stateful_set(self, namespace: str, name: str) -> Observed:
        try:
            found = client.AppsV1Api(self.api).read_namespaced_stateful_set(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return Observed(replicas=0, ready_replicas=0)
            raise
        return Observed(
            replicas=int(found.spec.replicas or 0),
            ready_replicas=int(found.status.ready_replicas or 0) if found.status else 0,
        )
